"""The item tower's title term (MGDSPR 3.5): H_item = e_id + tanh(W_t * mean(title words)).

The paper found LSTM or Transformer title encoders worse than this mean pooling, since
titles are keyword stacks without grammar."""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from model.layers.embedding import masked_mean


class ItemTitleEncoder(tf.keras.layers.Layer):
    """item id embedding [b, d], title word embeddings [b, T, d], title mask [b, T] ->
    e_id + tanh(W_t * masked_mean(title)) [b, d] (W_t without bias, as in the paper)."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.w_t = tf.keras.layers.Dense(dim, use_bias=False, name="w_t")

    def call(self, item_id_embedding, title_words, title_mask):
        return item_id_embedding + tf.tanh(self.w_t(masked_mean(title_words, title_mask)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}
