"""The multi-grained semantic unit (MGDSPR 3.2): six views of the query.

Chinese queries are short keyword stacks; segmentation errors and word order matter
little, so the query is read at several granularities at once: characters, character
bigrams, jieba words, words in context (a Transformer) and words against the user's
earlier queries.
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from features.spec import MAX_QUERY_WORDS
from model.layers.attention import MASK_LOGIT, TransformerBlock
from model.layers.embedding import masked_mean

# Order of the six vectors in Q_mgs.
GRANULARITIES = ("q_1gram", "q_2gram", "q_seg", "q_seg_seq", "q_his_seq", "q_mix")


class MultiGrainedSemanticUnit(tf.keras.layers.Layer):
    """Q_mgs from the query's token embeddings.

    Input: a dict of embeddings and masks (mask True = real token)
      chars [b, Lc, d], chars_mask [b, Lc]; bigrams [b, Lb, d], bigrams_mask [b, Lb];
      words [b, Lw, d], words_mask [b, Lw]; his [b, H, W, d], his_mask [b, H, W]
      (H earlier queries of W words each).
    Output: [b, 6, d], the rows in `GRANULARITIES` order:
      q_1gram   = mean of character embeddings
      q_2gram   = mean of bigram embeddings
      q_seg     = mean of word embeddings
      q_seg_seq = mean of the last Transformer layer over the words (learned positions)
      q_his_seq = softmax(q_seg . q_his^T / sqrt(d)) q_his, q_his[j] = mean of the
                  words of earlier query j; the zero vector when there is no history
      q_mix     = q_1gram + q_2gram + q_seg + q_seg_seq + q_his_seq
    All means and the attention are masked, so padding never changes the output.

    With `use_mgs=False` (the paper's ablation) the query is only the mean of its word
    embeddings, repeated six times: the rest of the network (six query slots in each
    behaviour attention, 25 fusion positions) keeps its shape and size, so the ablation
    removes the extra granularities and nothing else. chars, bigrams and his are then
    not needed.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ff_dim: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        use_mgs: bool = True,
        max_words: int = MAX_QUERY_WORDS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.ff_dim, self.num_layers = dim, num_heads, ff_dim, num_layers
        self.dropout, self.use_mgs, self.max_words = dropout, use_mgs, max_words
        if use_mgs:
            self.positions = self.add_weight(
                name="word_positions",
                shape=(max_words, dim),
                initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02),
            )
            self.blocks = [
                TransformerBlock(dim, num_heads, ff_dim, dropout, name=f"seg_seq_block_{i}") for i in range(num_layers)
            ]
            self.final_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="seg_seq_norm")

    def call(self, inputs: dict, training=None):
        words, words_mask = inputs["words"], inputs["words_mask"]
        q_seg = masked_mean(words, words_mask)  # [b, d]
        if not self.use_mgs:
            return tf.tile(q_seg[:, None, :], [1, len(GRANULARITIES), 1])

        q_1gram = masked_mean(inputs["chars"], inputs["chars_mask"])
        q_2gram = masked_mean(inputs["bigrams"], inputs["bigrams_mask"])

        # Positions past max_words can only be padding here; clamping keeps any longer
        # (padded) input valid without changing the real positions.
        length = tf.shape(words)[1]
        pos = tf.minimum(tf.range(length), self.max_words - 1)
        x = words + tf.gather(self.positions, pos)[None]
        for block in self.blocks:
            x = block(x, mask=words_mask, training=training)
        q_seg_seq = masked_mean(self.final_norm(x), words_mask)

        his, his_mask = inputs["his"], inputs["his_mask"]
        q_his = masked_mean(his, his_mask)  # [b, H, d]
        has_query = tf.reduce_any(his_mask, axis=-1)  # [b, H]
        logits = tf.matmul(q_seg[:, None, :], q_his, transpose_b=True) * (self.dim**-0.5)  # [b, 1, H]
        logits += (1.0 - tf.cast(has_query, logits.dtype))[:, None, :] * MASK_LOGIT
        q_his_seq = tf.matmul(tf.nn.softmax(logits, axis=-1), q_his)[:, 0, :]
        # No earlier query at all: the softmax above spreads over padding; use zeros.
        q_his_seq *= tf.cast(tf.reduce_any(has_query, axis=-1), q_his_seq.dtype)[:, None]

        q_mix = q_1gram + q_2gram + q_seg + q_seg_seq + q_his_seq
        return tf.stack([q_1gram, q_2gram, q_seg, q_seg_seq, q_his_seq, q_mix], axis=1)

    def get_config(self):
        return {
            **super().get_config(),
            "dim": self.dim,
            "num_heads": self.num_heads,
            "ff_dim": self.ff_dim,
            "num_layers": self.num_layers,
            "dropout": self.dropout,
            "use_mgs": self.use_mgs,
            "max_words": self.max_words,
        }
