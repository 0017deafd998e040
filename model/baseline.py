"""The alpha-DNN baseline of the paper: an MLP over mean-pooled query and behaviour
features, with MGDSPR's item tower and loss (selected by `config.model = "mlp"`)."""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from features.spec import BEHAVIOUR_SEQUENCES, ITEM_FIELDS
from model.config import MGDSPRConfig
from model.layers import Embeddings, masked_mean, tower_output

QUERY_INPUTS = ("query_chars", "query_bigrams", "query_words", "his_queries")


class AlphaDNNUserTower(tf.keras.Model):
    """[b, d] from the masked means of the query's chars, bigrams and words, of all
    historical query words, and of every field of every behaviour sequence (rt, st, lt x
    item id, leaf, top, brand, shop): 19 vectors concatenated [b, 19d] -> ReLU MLP
    (`config.mlp_hidden_units`) -> linear [b, d]. No sequence modelling, no query-aware
    attention: what MGDSPR's mgs, behaviour attention and fusion add is measured against it."""

    def __init__(self, config: MGDSPRConfig, embeddings: Embeddings, name: str = "user_tower", **kwargs):
        super().__init__(name=name, **kwargs)
        self.embeddings = embeddings
        self.hidden = [
            tf.keras.layers.Dense(units, activation="relu", name=f"hidden_{i}")
            for i, units in enumerate(config.mlp_hidden_units)
        ]
        self.drops = [tf.keras.layers.Dropout(config.dropout) for _ in config.mlp_hidden_units]
        self.out = tf.keras.layers.Dense(config.embedding_dim, name="output")
        self.score_scale = config.score_scale

    @staticmethod
    def pooled_feature_names() -> list[str]:
        seq = [f"{p}_{f}" for p in BEHAVIOUR_SEQUENCES for f in ITEM_FIELDS]
        return list(QUERY_INPUTS) + seq

    def call(self, feats: dict, training=None):
        pooled = []
        for name in self.pooled_feature_names():
            emb, mask = self.embeddings.embed(feats, name)
            if name == "his_queries":  # [b, H, W, d]: one bag of all earlier query words
                shape = tf.shape(emb)
                emb = tf.reshape(emb, [shape[0], -1, shape[-1]])
                mask = tf.reshape(mask, [shape[0], -1])
            pooled.append(masked_mean(emb, mask))
        x = tf.concat(pooled, axis=-1)
        for dense, drop in zip(self.hidden, self.drops):
            x = drop(dense(x), training=training)
        return tower_output(self.out(x), self.score_scale)
