"""Feature names, dtypes, maximum lengths and parse specs: the training/serving contract.

Every string feature is looked up in-graph in the vocabulary named by `Feature.vocab`
(see `features.vocab`); "" is padding everywhere and maps to the mask id 0.

Sequences are stored variable-length in TFRecords and parsed to dense `[batch, length]`
string tensors right-padded with "". Behaviour sequences are ordered most recent first,
so truncation keeps the newest behaviours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

PAD = ""

# Query granularities (the paper's multi-grained semantic unit).
MAX_QUERY_CHARS = 32
MAX_QUERY_BIGRAMS = 32
MAX_QUERY_WORDS = 12
# Historical queries: the user's most recent distinct earlier queries, each a bag of words
# stored as one space-joined string (words never contain whitespace after normalisation).
MAX_HIS_QUERIES = 10
MAX_HIS_QUERY_WORDS = 8
# Behaviour sequences (paper: real-time 50, short-term 100, long-term 100).
MAX_REALTIME = 50
MAX_SHORT_TERM = 100
MAX_LONG_TERM = 100
MAX_TITLE_WORDS = 32

# Behaviour windows relative to the search time t (strictly before t).
SESSION_GAP_SECONDS = 30 * 60  # real-time = same session; sessions split on this gap when no session_id
SHORT_TERM_DAYS = 10
LONG_TERM_DAYS = 30

BEHAVIOUR_ACTIONS = ("click", "cart", "collect", "purchase")
POSITIVE_ACTIONS = ("click", "purchase")

# Side information of an item, in the order the behaviour embedding uses it.
ITEM_SIDE_INFO = ("leaf_cat", "top_cat", "brand", "shop")
ITEM_FIELDS = ("item_id",) + ITEM_SIDE_INFO
BEHAVIOUR_SEQUENCES = {"rt": MAX_REALTIME, "st": MAX_SHORT_TERM, "lt": MAX_LONG_TERM}

# Training batches carry random catalog items for the sampled softmax under this prefix:
# `neg_item_id` [n], `neg_title_words` [n, MAX_TITLE_WORDS], ... (n = random negatives).
SAMPLED_ITEM_PREFIX = "neg_"


@dataclass(frozen=True)
class Feature:
    """One feature: `length` None for a scalar, else the padded sequence length."""

    name: str
    dtype: str  # "string" | "int64" | "float32"
    group: str  # "user" (user tower) | "item" (item tower) | "meta" (bookkeeping)
    length: int | None = None
    vocab: str | None = None
    doc: str = ""

    @property
    def shape(self) -> tuple:
        return () if self.length is None else (self.length,)


def _behaviour_features() -> list[Feature]:
    out = []
    for prefix, length in BEHAVIOUR_SEQUENCES.items():
        for field in ITEM_FIELDS:
            out.append(
                Feature(
                    f"{prefix}_{field}",
                    "string",
                    "user",
                    length,
                    field,
                    f"{field} of the {prefix} behaviours, most recent first",
                )
            )
    return out


USER_FEATURES: tuple[Feature, ...] = tuple(
    [
        Feature("query_chars", "string", "user", MAX_QUERY_CHARS, "char", "query character unigrams"),
        Feature("query_bigrams", "string", "user", MAX_QUERY_BIGRAMS, "bigram", "query character bigrams"),
        Feature("query_words", "string", "user", MAX_QUERY_WORDS, "word", "query jieba words"),
        Feature(
            "his_queries",
            "string",
            "user",
            MAX_HIS_QUERIES,
            "word",
            f"earlier distinct queries, newest first, each its words joined by ' ' (<= {MAX_HIS_QUERY_WORDS} used)",
        ),
    ]
    + _behaviour_features()
)

ITEM_FEATURES: tuple[Feature, ...] = (
    Feature("item_id", "string", "item", None, "item_id", "item id"),
    Feature("title_words", "string", "item", MAX_TITLE_WORDS, "word", "title jieba words"),
    Feature("leaf_cat", "string", "item", None, "leaf_cat", "leaf category"),
    Feature("top_cat", "string", "item", None, "top_cat", "top category"),
    Feature("brand", "string", "item", None, "brand", "brand, '' when none"),
    Feature("shop", "string", "item", None, "shop", "shop"),
)

META_FEATURES: tuple[Feature, ...] = (
    Feature("search_id", "string", "meta", None, None, "user|ts|query: groups the examples of one search"),
    Feature("user_id", "string", "meta"),
    Feature("query", "string", "meta", None, None, "the raw query text"),
    Feature("ts", "int64", "meta", None, None, "search time, epoch seconds"),
    Feature("day", "int64", "meta", None, None, "window day of the search (1-based)"),
    Feature("action", "string", "meta", None, None, "strongest positive action: click or purchase"),
)

FEATURES: dict[str, Feature] = {f.name: f for f in USER_FEATURES + ITEM_FEATURES + META_FEATURES}
USER_FEATURE_NAMES = tuple(f.name for f in USER_FEATURES)
ITEM_FEATURE_NAMES = tuple(f.name for f in ITEM_FEATURES)
EXAMPLE_FEATURE_NAMES = tuple(FEATURES)


def _tf():
    import features  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
    import tensorflow as tf

    return tf


def parse_spec(names: Sequence[str] = EXAMPLE_FEATURE_NAMES) -> dict:
    """The `tf.io.parse_example` spec for the named features (default: a training example)."""
    tf = _tf()
    dtypes = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}
    defaults = {"string": PAD, "int64": 0, "float32": 0.0}
    spec = {}
    for name in names:
        f = FEATURES[name]
        if f.length is None:
            spec[name] = tf.io.FixedLenFeature([], dtypes[f.dtype], default_value=defaults[f.dtype])
        else:
            spec[name] = tf.io.RaggedFeature(dtypes[f.dtype], row_splits_dtype=tf.int64)
    return spec


def parse_examples(serialized, names: Sequence[str] = EXAMPLE_FEATURE_NAMES) -> dict:
    """Parses a batch of serialized examples to dense tensors: scalars [batch], sequences
    [batch, length] right-padded with "" (longer ones truncated, keeping the front)."""
    tf = _tf()
    parsed = tf.io.parse_example(serialized, parse_spec(names))
    out = {}
    for name, value in parsed.items():
        f = FEATURES[name]
        if f.length is None:
            out[name] = value
        else:
            out[name] = value.to_tensor(default_value=PAD, shape=[None, f.length])
    return out


def to_example(values: Mapping[str, object]) -> bytes:
    """Serializes one record (feature name -> str/int/float or list of them) as a
    tf.train.Example, truncating sequences to their length. Unknown names raise, so a
    typo cannot silently drop a feature."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    fmap = ex.features.feature
    for name, value in values.items():
        f = FEATURES.get(name)
        if f is None:
            raise KeyError(f"unknown feature {name!r}; features/spec.py defines the names")
        seq = list(value)[: f.length] if f.length is not None else [value]
        if f.dtype == "string":
            fmap[name].bytes_list.value.extend(
                v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in seq
            )
        elif f.dtype == "int64":
            fmap[name].int64_list.value.extend(int(v) for v in seq)
        else:
            fmap[name].float_list.value.extend(float(v) for v in seq)
    return ex.SerializeToString()
