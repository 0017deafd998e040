"""Embedding tables, one per vocabulary, shared by the user and item towers, and the
masked mean used wherever a bag of tokens becomes one vector."""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from model.lookup import vocab_of


def masked_mean(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over the second-to-last axis of the unmasked rows.

    x [..., L, d] float, mask [..., L] bool -> [..., d]; an all-padding row gives zeros
    (not NaN), so an empty sequence is the zero vector."""
    m = tf.cast(mask, x.dtype)[..., None]
    total = tf.reduce_sum(x * m, axis=-2)
    count = tf.reduce_sum(m, axis=-2)
    return total / tf.maximum(count, 1.0)


class Embeddings(tf.keras.layers.Layer):
    """One `tf.keras.layers.Embedding` per vocabulary (word, char, bigram, item_id,
    leaf_cat, top_cat, brand, shop), each [table_sizes[name], d].

    Tables are shared across features of the same vocabulary: query words, historical
    query words and title words use `word`; behaviour item ids and the item tower's e_id
    use `item_id`. Sharing the item-id table means every behaviour an item appears in
    trains the same vector the retrieval score uses, and the largest table exists once.

    Being plain Embedding layers, the tables are split into shards by a
    ParameterServerStrategy's `variable_partitioner`.
    """

    def __init__(self, table_sizes: dict[str, int], dim: int, name: str = "embeddings", **kwargs):
        super().__init__(name=name, **kwargs)
        self.table_sizes = dict(table_sizes)
        self.dim = dim
        # Std 1/sqrt(d): a row has norm ~1, so initial dot products are O(1). One
        # initializer per table: a reused unseeded instance repeats its values.
        self.tables = {
            vocab: tf.keras.layers.Embedding(
                rows,
                dim,
                embeddings_initializer=tf.keras.initializers.TruncatedNormal(stddev=dim**-0.5),
                name=f"{vocab}_embedding",
            )
            for vocab, rows in sorted(self.table_sizes.items())
        }

    def lookup(self, vocab: str, ids: tf.Tensor) -> tf.Tensor:
        """ids [...] int -> [..., d] rows of vocabulary `vocab`."""
        if vocab not in self.tables:
            raise KeyError(f"no embedding table for vocabulary {vocab!r}; have {sorted(self.tables)}")
        return self.tables[vocab](ids)

    def embed(self, feats: dict, name: str) -> tuple[tf.Tensor, tf.Tensor]:
        """Feature `name` of an id dict -> (embeddings [..., d], mask [...] bool, id != 0)."""
        if name not in feats:
            raise KeyError(f"missing feature {name!r}; got {sorted(feats)}")
        ids = feats[name]
        if ids.dtype == tf.string:
            raise TypeError(f"feature {name!r} is still strings; map it to ids with model.lookup.Lookup first")
        vocab = vocab_of(name)
        if vocab is None:
            raise KeyError(f"feature {name!r} has no vocabulary")
        return self.lookup(vocab, ids), tf.not_equal(ids, 0)

    def get_config(self):
        return {"table_sizes": self.table_sizes, "dim": self.dim, "name": self.name}
