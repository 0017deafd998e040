"""In-graph string -> id lookup for every feature that has a vocabulary.

    lookup = Lookup("OUT/vocab")
    ids = lookup(parse_examples(serialized))   # {"query_words": int64 [b, 12], ...}
    lookup.table_sizes                         # {"word": 1 + n_words + 100, ...}

Ids follow `features.vocab`: "" (padding) -> 0, the file's tokens -> 1..n in file order,
unseen tokens -> n+1..n+k by a fingerprint hash (k = `VOCABS[name].oov_buckets`), so a
model accepts tokens it never saw in training. Only standard TensorFlow lookup ops
(HashTableV2, InitializeTableFromTextFileV2, StringToHashBucketFast): the vocabulary
files become SavedModel assets and TF Serving runs the graph unchanged.
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from features.spec import FEATURES, MAX_HIS_QUERY_WORDS, PAD, SAMPLED_ITEM_PREFIX
from features.vocab import VOCABS, load_vocab, vocab_path

HIS_QUERIES = "his_queries"


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
    """

    def __init__(self, vocab_dir: str, name: str = "lookup"):
        super().__init__(name=name)
        self.vocab_dir = vocab_dir
        self.vocab_sizes: dict[str, int] = {}
        self.tables = {}
        with self.name_scope:
            for vname, spec in sorted(VOCABS.items()):
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
        return {v: 1 + n + VOCABS[v].oov_buckets for v, n in self.vocab_sizes.items()}

    def ids(self, vocab: str, tokens: tf.Tensor) -> tf.Tensor:
        """int64 ids of a string tensor of any shape in vocabulary `vocab`."""
        tokens = tf.convert_to_tensor(tokens)
        # Table ids are 0..n+k-1; shift by one so that 0 stays free for the mask.
        ids = self.tables[vocab].lookup(tokens) + 1
        return tf.where(tf.equal(tokens, PAD), tf.zeros_like(ids), ids)

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
