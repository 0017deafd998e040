"""In-graph string -> id lookup for every feature that has a vocabulary.

    lookup = Lookup("OUT/vocab")
    ids = lookup(parse_examples(serialized))   # {"query_words": int64 [b, 12], ...}
    lookup.table_sizes                         # {"word": 1 + n_words + 100, ...}

Ids follow `features.vocab`: "" (padding) -> 0, the file's tokens -> 1..n in file order,
unseen tokens -> n+1..n+k by a fingerprint hash (k = `VOCABS[name].oov_buckets`), so a
model accepts tokens it never saw in training. Only standard TensorFlow lookup ops
(HashTableV2, InitializeTableFromTextFileV2, StringToHashBucketFast): the vocabulary
files become SavedModel assets and TF Serving runs the graph unchanged.

Item ids at catalog scale (`config.item_ids`, docs/scale.md): a string table over 10^8
item ids on every worker and in the serving graph is too large, so instead of the exact
`vocab` (the default) item ids can be hashed (`"hash"`: fingerprint into
`config.item_id_buckets` rows, colliding items share a row; `hash_collisions` measures
how many) or arrive pre-mapped (`"integer"`: decimal ids 0..item_id_buckets-1 assigned
offline, one row each). Either way `item_id` has 1 + item_id_buckets rows and no table.
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from features.spec import FEATURES, MAX_HIS_QUERY_WORDS, PAD, SAMPLED_ITEM_PREFIX
from features.vocab import VOCABS, load_vocab, vocab_path

HIS_QUERIES = "his_queries"
ITEM_ID = "item_id"
ITEM_ID_MODES = ("vocab", "hash", "integer")


def vocab_of(name: str) -> str | None:
    """The vocabulary of feature `name` (a `neg_`-prefixed sampled-item feature included),
    or None when the feature is not looked up."""
    f = FEATURES.get(name)
    if f is None and name.startswith(SAMPLED_ITEM_PREFIX):
        f = FEATURES.get(name[len(SAMPLED_ITEM_PREFIX) :])
    if f is None or f.dtype != "string":
        return None
    return f.vocab


class Lookup(tf.Module):
    """Maps string features to int64 ids with one static table per vocabulary.

    Call with a dict of tensors; returns a new dict where every string feature with a
    vocabulary is replaced by ids of the same shape, except `his_queries` [b, H] (each
    element the words of one earlier query joined by ' ') which becomes
    [b, H, MAX_HIS_QUERY_WORDS] ids (words beyond that are dropped, missing ones are 0).
    Features without a vocabulary, and features that are already integer, pass through.
    `config` (an MGDSPRConfig) chooses how item ids map (`item_ids`, `item_id_buckets`);
    without one they use the exact vocabulary.
    """

    def __init__(self, vocab_dir: str, config=None, name: str = "lookup"):
        super().__init__(name=name)
        self.vocab_dir = vocab_dir
        self.item_ids = getattr(config, "item_ids", "vocab")
        self.item_id_buckets = getattr(config, "item_id_buckets", 0)
        if self.item_ids not in ITEM_ID_MODES:
            raise ValueError(f"item_ids must be one of {ITEM_ID_MODES}, got {self.item_ids!r}")
        if self.item_ids != "vocab" and self.item_id_buckets < 1:
            raise ValueError(f"item_ids={self.item_ids!r} needs item_id_buckets >= 1, got {self.item_id_buckets}")
        self.vocab_sizes: dict[str, int] = {}
        self.tables = {}
        with self.name_scope:
            for vname, spec in sorted(VOCABS.items()):
                if vname == ITEM_ID and self.item_ids != "vocab":
                    continue  # no table: hashed or pre-mapped ids
                n = len(load_vocab(vocab_dir, vname))
                self.vocab_sizes[vname] = n
                init = None
                if n:
                    init = tf.lookup.TextFileInitializer(
                        vocab_path(vocab_dir, vname),
                        key_dtype=tf.string,
                        key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                        value_dtype=tf.int64,
                        value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                        vocab_size=n,
                    )
                self.tables[vname] = tf.lookup.StaticVocabularyTable(
                    init, num_oov_buckets=spec.oov_buckets, name=f"{vname}_table"
                )

    @property
    def table_sizes(self) -> dict[str, int]:
        """Embedding rows per vocabulary: mask + tokens + OOV buckets."""
        sizes = {v: 1 + n + VOCABS[v].oov_buckets for v, n in self.vocab_sizes.items()}
        if self.item_ids != "vocab":
            sizes[ITEM_ID] = 1 + self.item_id_buckets
        return dict(sorted(sizes.items()))

    def ids(self, vocab: str, tokens: tf.Tensor) -> tf.Tensor:
        """int64 ids of a string tensor of any shape in vocabulary `vocab`."""
        tokens = tf.convert_to_tensor(tokens)
        if vocab == ITEM_ID and self.item_ids == "hash":
            ids = tf.strings.to_hash_bucket_fast(tokens, self.item_id_buckets) + 1
        elif vocab == ITEM_ID and self.item_ids == "integer":
            ids = self._integer_ids(tokens)
        else:
            # Table ids are 0..n+k-1; shift by one so that 0 stays free for the mask.
            ids = self.tables[vocab].lookup(tokens) + 1
        return tf.where(tf.equal(tokens, PAD), tf.zeros_like(ids), ids)

    def _integer_ids(self, tokens: tf.Tensor) -> tf.Tensor:
        """Pre-mapped decimal item ids 0..item_id_buckets-1 -> rows 1..item_id_buckets; an
        id outside that range is an error naming the feature's id space."""
        values = tf.strings.to_number(tf.where(tf.equal(tokens, PAD), "0", tokens), out_type=tf.int64)
        in_range = tf.reduce_all((values >= 0) & (values < self.item_id_buckets))
        check = tf.debugging.Assert(
            in_range, [f"item_id outside the pre-mapped id space [0, {self.item_id_buckets}) (item_id_buckets):",
                       tf.boolean_mask(tokens, (values < 0) | (values >= self.item_id_buckets))], summarize=5)
        with tf.control_dependencies([check]):
            return values + 1

    def __call__(self, feats: dict) -> dict:
        out = dict(feats)
        for name, value in feats.items():
            vocab = vocab_of(name)
            if vocab is None or value.dtype != tf.string:
                continue
            if name == HIS_QUERIES:
                value = split_his_queries(value)
            out[name] = self.ids(vocab, value)
        return out


def split_his_queries(his_queries: tf.Tensor, words: int = MAX_HIS_QUERY_WORDS) -> tf.Tensor:
    """[b, H] strings of space-joined words -> [b, H, words] strings, right-padded with ""."""
    # sep=None splits on runs of whitespace, so stray spaces never make empty words.
    ragged = tf.strings.split(his_queries)
    shape = tf.concat([tf.shape(his_queries, out_type=tf.int64), [words]], axis=0)
    return ragged.to_tensor(default_value=PAD, shape=shape)


def hash_collisions(vocab_dir: str, buckets: int, chunk: int = 1 << 20) -> dict:
    """How many items of the item vocabulary share a hashed row with another item when
    hashed into `buckets` rows, next to the rate expected of a uniform hash,
    1 - (1 - 1/buckets)^(items - 1). Reads the vocabulary in chunks (10^8 ids fit)."""
    import numpy as np

    tokens = load_vocab(vocab_dir, ITEM_ID)
    rows = np.concatenate([tf.strings.to_hash_bucket_fast(tokens[i : i + chunk], buckets).numpy()
                           for i in range(0, len(tokens), chunk)] or [np.zeros(0, np.int64)])
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    colliding = int((counts[inverse] > 1).sum())
    n = len(tokens)
    return {
        "items": n,
        "buckets": buckets,
        "colliding_items": colliding,
        "collision_rate": colliding / n if n else 0.0,
        "expected_collision_rate": 1 - (1 - 1 / buckets) ** max(n - 1, 0),
    }
