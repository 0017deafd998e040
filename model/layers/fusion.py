"""Fusion of semantics and personalisation (MGDSPR 3.4): [CLS], Q_mgs, H_real, H_short,
H_long -> the user-query embedding H_qu."""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from model.layers.attention import TransformerBlock


class FusionTransformer(tf.keras.layers.Layer):
    """Self-attention over a learned [CLS] vector followed by the parts; the [CLS] output
    is the user-query embedding.

    parts: list of [b, n_i, d] (Q_mgs, H_real, H_short, H_long: 4 x 6 vectors) ->
    [b, d]. A learned position embedding tells the slots apart (which branch, which
    granularity); all 1 + sum(n_i) positions are real, so there is no mask: a branch with
    no history contributes its zero vectors, which is itself information."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int, num_layers: int = 1, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.ff_dim, self.num_layers, self.dropout = (
            dim,
            num_heads,
            ff_dim,
            num_layers,
            dropout,
        )
        self.blocks = [TransformerBlock(dim, num_heads, ff_dim, dropout, name=f"block_{i}") for i in range(num_layers)]
        self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="final_norm")

    def build(self, input_shape):
        slots = 1 + sum(int(s[1]) for s in input_shape)
        init = tf.keras.initializers.TruncatedNormal
        self.cls = self.add_weight(name="cls", shape=(self.dim,), initializer=init(stddev=0.02))
        self.positions = self.add_weight(name="positions", shape=(slots, self.dim), initializer=init(stddev=0.02))
        super().build(input_shape)

    def call(self, parts, training=None):
        x = tf.concat(list(parts), axis=1)
        cls = tf.tile(self.cls[None, None, :], [tf.shape(x)[0], 1, 1])
        x = tf.concat([cls, x], axis=1) + self.positions[None]
        for block in self.blocks:
            x = block(x, training=training)
        return self.final_norm(x[:, 0, :])

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "ff_dim": self.ff_dim,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
        }


class ConcatFusion(tf.keras.layers.Layer):
    """The paper's "without trm" ablation: the parts concatenated and projected.

    parts: list of [b, n_i, d] -> flattened [b, sum(n_i) * d] -> dense -> [b, d]."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.project = tf.keras.layers.Dense(dim, name="project")

    def call(self, parts, training=None):
        x = tf.concat(list(parts), axis=1)
        slots = sum(int(p.shape[1]) for p in parts)
        return self.project(tf.reshape(x, [-1, slots * self.dim]))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}
