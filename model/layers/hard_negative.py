"""Relevance-improving hard negatives, I_mix (MGDSPR 3.6).

For each query the N sampled negatives it scores highest (the ones it confuses with the
positive) are mixed with the positive, I_mix = alpha * i+ + (1 - alpha) * I_hard with
alpha ~ U(a, b) per negative, and added to the softmax denominator. Alpha near 1 puts a
mixture close to the positive: a harder negative that forces finer distinctions (the
paper's "relevance" gain). Mixtures are synthetic, not sampled, so they get no log-Q
correction.

Since scores are dot products, <q, I_mix> = alpha <q, i+> + (1 - alpha) <q, I_hard>: the
loss uses `hard_negative_mix` on scores and never materialises the [b, N, d] mixtures;
`HardNegativeMix` builds the vectors for inspection and tests.
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf


def _num_hard(num: int, pool: tf.Tensor):
    """min(num, pool size), a Python int when the pool size is static."""
    static = pool.shape[-1]
    return min(num, static) if static is not None else tf.minimum(num, tf.shape(pool)[-1])


def hard_negative_mix(
    scores,
    positive_scores,
    usable,
    num: int,
    mix_range: tuple[float, float] = (0.4, 0.6),
    alphas=None,
    seed: int | None = None,
) -> dict:
    """Selects the top-`num` usable negatives per query and mixes their scores.

    scores [b, P] = <q, candidate> for the P sampled candidates; positive_scores [b] =
    <q, i+>; usable [b, P] bool (False for the positive itself and accidental hits).
    `alphas` [b, N] overrides the U(a, b) draws (tests); N = min(num, P).

    Returns a dict of [b, N] tensors: `indices` (into P, best first), `valid` (False where
    a row had fewer than N usable negatives), `alphas`, `hard_scores` (<q, I_hard>) and
    `mix_scores` (<q, I_mix>)."""
    n = _num_hard(num, scores)
    masked = tf.where(usable, scores, tf.fill(tf.shape(scores), tf.constant(float("-inf"), scores.dtype)))
    # Selection is a discrete choice; gradients flow through the gathered scores.
    _, indices = tf.math.top_k(tf.stop_gradient(masked), k=n, sorted=True)
    hard_scores = tf.gather(scores, indices, batch_dims=1)
    valid = tf.gather(usable, indices, batch_dims=1)
    if alphas is None:
        a, b = mix_range
        alphas = tf.random.uniform(tf.shape(indices), a, b, dtype=scores.dtype, seed=seed)
    else:
        alphas = tf.cast(tf.convert_to_tensor(alphas), scores.dtype)
    mix_scores = alphas * positive_scores[:, None] + (1.0 - alphas) * hard_scores
    return {
        "indices": indices,
        "valid": valid,
        "alphas": alphas,
        "hard_scores": hard_scores,
        "mix_scores": mix_scores,
    }


class HardNegativeMix(tf.keras.layers.Layer):
    """The mixtures as vectors.

    call(query [b, d], positives [b, d], candidates [P, d], usable [b, P], alphas=None)
    -> the dict of `hard_negative_mix` plus `mixed` [b, N, d]: alpha * i+ + (1 - alpha) *
    candidates[indices], and `hard` [b, N, d]: the selected candidates."""

    def __init__(self, num: int, mix_range: tuple[float, float] = (0.4, 0.6), **kwargs):
        super().__init__(**kwargs)
        a, b = mix_range
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"need 0 <= a < b <= 1 for the mixing range, got {mix_range}")
        self.num, self.mix_range = num, (float(a), float(b))

    def call(self, query, positives, candidates, usable, alphas=None):
        scores = tf.matmul(query, candidates, transpose_b=True)
        positive_scores = tf.reduce_sum(query * positives, axis=-1)
        out = hard_negative_mix(scores, positive_scores, usable, self.num, self.mix_range, alphas)
        hard = tf.gather(candidates, out["indices"])  # [b, N, d]
        alpha = out["alphas"][..., None]
        out["hard"] = hard
        out["mixed"] = alpha * positives[:, None, :] + (1.0 - alpha) * hard
        return out

    def get_config(self):
        return {**super().get_config(), "num": self.num, "mix_range": self.mix_range}
