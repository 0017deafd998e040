"""The user's behaviours, encoded per time scale and attended to by the query (MGDSPR 3.3).

Each branch ends in `zero_attention` with the six Q_mgs vectors as queries, giving
[b, 6, d]: H_real (real-time, same session), H_short (10 days), H_long (a month).
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from model.layers.attention import SelfAttentionBlock
from model.layers.embedding import masked_mean
from model.layers.zero_attention import zero_attention


class BehaviourEmbedding(tf.keras.layers.Layer):
    """One vector per behaviour from its item id and side information.

    fields: list of [b, L, d] embeddings (item id, leaf category, top category, brand,
    shop) -> concatenated [b, L, 5d] -> linear projection -> [b, L, d]."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.project = tf.keras.layers.Dense(dim, name="project")

    def call(self, fields):
        return self.project(tf.concat(list(fields), axis=-1))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


class RealTimeBehaviour(tf.keras.layers.Layer):
    """Real-time branch: LSTM layers with residual connections and dropout, multi-head
    self-attention, then zero attention with the query.

    queries [b, Q, d], behaviours [b, L, d] (most recent first, right-padded), mask [b, L]
    -> H_real [b, Q, d].

    The LSTM reads the session in time order (oldest to newest): each sequence's real
    part is reversed in place, so padding stays at the end and never reaches a real step.
    """

    def __init__(
        self, dim: int, num_heads: int, lstm_layers: int = 2, dropout: float = 0.2, unroll: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.lstm_layers, self.dropout, self.unroll = (
            dim,
            num_heads,
            lstm_layers,
            dropout,
            unroll,
        )
        # The generic RNN loop over an LSTMCell rather than tf.keras.layers.LSTM: the
        # latter's fused function asks to colocate its weights, which fails once a
        # ParameterServerStrategy has put them on different parameter servers.
        self.lstms = [
            tf.keras.layers.RNN(
                tf.keras.layers.LSTMCell(dim, name="cell"), return_sequences=True, unroll=unroll, name=f"lstm_{i}"
            )
            for i in range(lstm_layers)
        ]
        self.drops = [tf.keras.layers.Dropout(dropout) for _ in range(lstm_layers)]
        self.self_attention = SelfAttentionBlock(dim, num_heads, dropout, name="self_attention")

    def encode(self, behaviours, mask, training=None):
        """[b, L, d], [b, L] -> contextualised behaviours [b, L, d] (same order as input)."""
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        h = tf.reverse_sequence(behaviours, lengths, seq_axis=1, batch_axis=0)
        time_mask = tf.reverse_sequence(mask, lengths, seq_axis=1, batch_axis=0)
        for lstm, drop in zip(self.lstms, self.drops):
            h = h + drop(lstm(h, mask=time_mask, training=training), training=training)
        h = tf.reverse_sequence(h, lengths, seq_axis=1, batch_axis=0)
        return self.self_attention(h, mask=mask, training=training)

    def call(self, queries, behaviours, mask, training=None):
        return zero_attention(queries, self.encode(behaviours, mask, training), mask)[0]

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "lstm_layers": self.lstm_layers,
            "dropout": self.dropout,
            "unroll": self.unroll,
        }


class ShortTermBehaviour(tf.keras.layers.Layer):
    """Short-term branch: multi-head self-attention, then zero attention with the query.

    queries [b, Q, d], behaviours [b, L, d], mask [b, L] -> H_short [b, Q, d]."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.self_attention = SelfAttentionBlock(dim, num_heads, dropout, name="self_attention")

    def call(self, queries, behaviours, mask, training=None):
        encoded = self.self_attention(behaviours, mask=mask, training=training)
        return zero_attention(queries, encoded, mask)[0]

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_heads": self.num_heads, "dropout": self.dropout}


class LongTermBehaviour(tf.keras.layers.Layer):
    """Long-term branch: the month's behaviours as separate sequences of item ids, shops,
    leaf categories and brands, each mean-pooled to one vector, then zero attention with
    the query over those vectors.

    queries [b, Q, d], sequences: list of (embeddings [b, L, d], mask [b, L]) ->
    H_long [b, Q, d]. A sequence with no real element is masked out entirely."""

    def call(self, queries, sequences):
        pooled = tf.stack([masked_mean(e, m) for e, m in sequences], axis=1)  # [b, S, d]
        present = tf.stack([tf.reduce_any(m, axis=-1) for _, m in sequences], axis=1)  # [b, S]
        return zero_attention(queries, pooled, present)[0]
