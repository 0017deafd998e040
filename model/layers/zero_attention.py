"""Query-aware attention over behaviours with a prepended zero vector (MGDSPR 3.3).

Unlike target-item attention (DIN), the *query* attends over the user's behaviours. A zero
vector is put in front of every behaviour sequence: its score <q, 0> is always 0 and its
value is 0, so when no behaviour scores above 0 for a query the attention mass goes to
the zero vector and the output shrinks towards 0 instead of averaging unrelated behaviours
into the user vector (noise). An empty history gives exactly the zero vector.
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from model.layers.attention import MASK_LOGIT


def zero_attention(queries, values, mask, scale: float | None = None):
    """Attention of each query over [0; values].

    queries [b, Q, d], values [b, L, d] (keys are the values, as in the paper), mask
    [b, L] bool (True = real behaviour). Returns (outputs [b, Q, d], weights [b, Q, 1 + L])
    where weights[..., 0] is the mass on the zero vector. `scale` multiplies the logits
    (default 1/sqrt(d), the usual dot-product attention scaling)."""
    d = tf.cast(tf.shape(queries)[-1], queries.dtype)
    scale = tf.math.rsqrt(d) if scale is None else tf.cast(scale, queries.dtype)
    logits = tf.matmul(queries, values, transpose_b=True) * scale  # [b, Q, L]
    logits += (1.0 - tf.cast(mask, logits.dtype))[:, None, :] * MASK_LOGIT
    zero_logit = tf.zeros_like(logits[..., :1])  # <q, 0> = 0
    weights = tf.nn.softmax(tf.concat([zero_logit, logits], axis=-1), axis=-1)
    # The zero vector's value is 0: only the behaviours' weights contribute.
    outputs = tf.matmul(weights[..., 1:], values)
    return outputs, weights


class ZeroAttention(tf.keras.layers.Layer):
    """Keras wrapper of `zero_attention`: call(queries [b, Q, d], values [b, L, d],
    mask [b, L]) -> [b, Q, d]; `return_weights=True` also returns [b, Q, 1 + L]."""

    def call(self, queries, values, mask, return_weights: bool = False):
        outputs, weights = zero_attention(queries, values, mask)
        return (outputs, weights) if return_weights else outputs
