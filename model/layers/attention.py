"""Masked multi-head self-attention and the Transformer block built from it.

Written with Dense projections and `tf.matmul` (no einsum) so that TensorFlow's profiler
can count the FLOPs (`model.bench`) and the graph stays plain standard ops for serving.
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

# Added to logits of masked keys; exp() of it underflows to exactly 0 in float32.
MASK_LOGIT = -1e9


class MultiHeadSelfAttention(tf.keras.layers.Layer):
    """Scaled dot-product self-attention with `num_heads` heads.

    x [b, L, d], mask [b, L] bool (True = real) -> [b, L, d]. Masked positions are never
    attended to, so padding cannot change the outputs at real positions (the outputs at
    padded positions are meaningless and must be masked downstream)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.head_dim = dim // num_heads
        self.q = tf.keras.layers.Dense(dim, name="query")
        self.k = tf.keras.layers.Dense(dim, name="key")
        self.v = tf.keras.layers.Dense(dim, name="value")
        self.out = tf.keras.layers.Dense(dim, name="output")
        self.attention_dropout = tf.keras.layers.Dropout(dropout)

    def _heads(self, x: tf.Tensor) -> tf.Tensor:
        """[b, L, d] -> [b, h, L, d/h]."""
        b, length = tf.shape(x)[0], tf.shape(x)[1]
        x = tf.reshape(x, [b, length, self.num_heads, self.head_dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, x, mask=None, training=None):
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        logits = tf.matmul(q, k, transpose_b=True) * (self.head_dim**-0.5)  # [b, h, L, L]
        if mask is not None:
            logits += (1.0 - tf.cast(mask, logits.dtype))[:, None, None, :] * MASK_LOGIT
        weights = self.attention_dropout(tf.nn.softmax(logits, axis=-1), training=training)
        y = tf.matmul(weights, v)  # [b, h, L, d/h]
        b, length = tf.shape(x)[0], tf.shape(x)[1]
        y = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [b, length, self.dim])
        return self.out(y)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "dropout": self.dropout}


class SelfAttentionBlock(tf.keras.layers.Layer):
    """Residual self-attention sublayer, pre-norm: x + dropout(MHSA(LayerNorm(x))).

    x [b, L, d], mask [b, L] bool -> [b, L, d]."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="norm")
        self.attention = MultiHeadSelfAttention(dim, num_heads, dropout, name="attention")
        self.drop = tf.keras.layers.Dropout(dropout)

    def call(self, x, mask=None, training=None):
        return x + self.drop(self.attention(self.norm(x), mask=mask, training=training), training=training)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "dropout": self.dropout}


class TransformerBlock(tf.keras.layers.Layer):
    """Pre-norm Transformer encoder block: self-attention then a ReLU feed-forward
    (d -> ff_dim -> d), each residual.

    x [b, L, d], mask [b, L] bool or None -> [b, L, d]."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.ff_dim, self.dropout = dim, num_heads, ff_dim, dropout
        self.attention = SelfAttentionBlock(dim, num_heads, dropout, name="self_attention")
        self.norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="ff_norm")
        self.ff_in = tf.keras.layers.Dense(ff_dim, activation="relu", name="ff_in")
        self.ff_out = tf.keras.layers.Dense(dim, name="ff_out")
        self.drop = tf.keras.layers.Dropout(dropout)

    def call(self, x, mask=None, training=None):
        x = self.attention(x, mask=mask, training=training)
        return x + self.drop(self.ff_out(self.ff_in(self.norm(x))), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "ff_dim": self.ff_dim,
            "dropout": self.dropout,
        }
