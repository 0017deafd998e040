"""Keras layers of MGDSPR, one concept per section; docstrings give shapes ([b] batch,
[L] sequence length, [d] embedding_dim).

    Embeddings, masked_mean              shared tables, one per vocabulary
    tower_output, trim_padding           unit-length outputs; sequences cut to the batch's longest
    MultiHeadSelfAttention, SelfAttentionBlock, TransformerBlock
    zero_attention, ZeroAttention        query over [0; behaviours]
    MultiGrainedSemanticUnit             Q_mgs [b, 6, d]
    BehaviourEmbedding, RealTimeBehaviour, ShortTermBehaviour, LongTermBehaviour
    FusionTransformer, ConcatFusion      -> H_qu [b, d]
    ItemTitleEncoder                     e_id + tanh(W_t mean(title))
    hard_negative_mix, HardNegativeMix   I_mix
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from features.spec import MAX_QUERY_WORDS
from model.fast import LSTM, keras_lstm, unique_lookup
from model.lookup import vocab_of

# --------------------------------------------------------------------------------------
# Embedding tables, one per vocabulary, shared by the user and item towers, and the
# masked mean used wherever a bag of tokens becomes one vector.
# --------------------------------------------------------------------------------------


def masked_mean(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean over the second-to-last axis of the unmasked rows.

    x [..., L, d] float, mask [..., L] bool -> [..., d]; an all-padding row gives zeros
    (not NaN), so an empty sequence is the zero vector."""
    m = tf.cast(mask, x.dtype)[..., None]
    total = tf.reduce_sum(x * m, axis=-2)
    count = tf.reduce_sum(m, axis=-2)
    return total / tf.maximum(count, 1.0)


def tower_output(x: tf.Tensor, score_scale: float) -> tf.Tensor:
    """A tower's final vector [b, d]: unit length when the score is a scaled cosine
    (`score_scale` > 0), as is otherwise."""
    return tf.math.l2_normalize(x, axis=-1, epsilon=1e-12) if score_scale > 0 else x


def trim_padding(ids: tf.Tensor, *others: tf.Tensor) -> list[tf.Tensor]:
    """Right-padded sequences [b, L, ...] cut to the batch's longest real one.

    The length is read from `ids` (0 = padding; the last non-zero position of any row);
    `others` (fields of the same sequence) are cut to the same length. Outputs at real
    positions are unchanged everywhere downstream (all sequence layers mask padding),
    while the LSTM's loop and the attentions stop paying for padding."""
    length = tf.shape(ids)[1]
    real = tf.not_equal(ids, 0)
    if ids.shape.rank > 2:
        real = tf.reduce_any(tf.reshape(real, [tf.shape(ids)[0], length, -1]), axis=-1)
    positions = tf.range(1, length + 1)[None, :]
    keep = tf.maximum(tf.reduce_max(tf.where(real, positions, 0)), 1)
    return [t[:, :keep] for t in (ids, *others)]


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
        """ids [...] int -> [..., d] rows of vocabulary `vocab`, each distinct id gathered
        once (model.fast.unique_lookup: under a parameter-server strategy only the distinct
        rows cross the network, and their gradients come back summed per id)."""
        if vocab not in self.tables:
            raise KeyError(f"no embedding table for vocabulary {vocab!r}; have {sorted(self.tables)}")
        return unique_lookup(self.tables[vocab], ids)

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


# --------------------------------------------------------------------------------------
# Masked multi-head self-attention and the Transformer block built from it.
#
# Written with Dense projections and `tf.matmul` (no einsum) so that TensorFlow's profiler
# can count the FLOPs (`model.bench`) and the graph stays plain standard ops for serving.
# --------------------------------------------------------------------------------------

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

    def probabilities(self, x, mask=None):
        """The attention probabilities [b, h, L, L] (row i: what position i attends to)."""
        q, k = self._heads(self.q(x)), self._heads(self.k(x))
        logits = tf.matmul(q, k, transpose_b=True) * (self.head_dim**-0.5)  # [b, h, L, L]
        if mask is not None:
            logits += (1.0 - tf.cast(mask, logits.dtype))[:, None, None, :] * MASK_LOGIT
        return tf.nn.softmax(logits, axis=-1)

    def call(self, x, mask=None, training=None):
        weights = self.attention_dropout(self.probabilities(x, mask), training=training)
        y = tf.matmul(weights, self._heads(self.v(x)))  # [b, h, L, d/h]
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


# --------------------------------------------------------------------------------------
# Query-aware attention over behaviours with a prepended zero vector (MGDSPR 3.3).
#
# Unlike target-item attention (DIN), the *query* attends over the user's behaviours. A zero
# vector is put in front of every behaviour sequence: its score <q, 0> is always 0 and its
# value is 0, so when no behaviour scores above 0 for a query the attention mass goes to
# the zero vector and the output shrinks towards 0 instead of averaging unrelated behaviours
# into the user vector (noise). An empty history gives exactly the zero vector.
# --------------------------------------------------------------------------------------


def zero_attention(queries, values, mask, scale: float | None = None, zero_logit=None):
    """Attention of each query over [0; values].

    queries [b, Q, d], values [b, L, d] (keys are the values, as in the paper), mask
    [b, L] bool (True = real behaviour). Returns (outputs [b, Q, d], weights [b, Q, 1 + L])
    where weights[..., 0] is the mass on the zero vector. `scale` multiplies the logits
    (default 1/sqrt(d), the usual dot-product attention scaling); `zero_logit` (default 0,
    <q, 0>) is the zero vector's logit, a scalar: the higher, the more like the query a
    value must be to be attended to."""
    d = tf.cast(tf.shape(queries)[-1], queries.dtype)
    scale = tf.math.rsqrt(d) if scale is None else tf.cast(scale, queries.dtype)
    logits = tf.matmul(queries, values, transpose_b=True) * scale  # [b, Q, L]
    logits += (1.0 - tf.cast(mask, logits.dtype))[:, None, :] * MASK_LOGIT
    zero_logit = tf.zeros_like(logits[..., :1]) + (0.0 if zero_logit is None else tf.cast(zero_logit, logits.dtype))
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


# --------------------------------------------------------------------------------------
# The multi-grained semantic unit (MGDSPR 3.2): six views of the query.
#
# Chinese queries are short keyword stacks and word segmentation can go wrong, so the query
# is read at several granularities at once: characters, character bigrams, jieba words,
# words in context (a Transformer) and words against the user's earlier queries.
# --------------------------------------------------------------------------------------

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
      q_his_seq = zero attention of q_seg over q_his, q_his[j] = mean of the words of
                  earlier query j; the zero vector when there is no history
      q_mix     = q_1gram + q_2gram + q_seg + q_seg_seq + q_his_seq
    Each of the first four rows goes through its own LayerNorm (q_mix sums the normalised
    rows), so they are on one scale. The history is attended on the same scale (q_seg's
    LayerNorm applied to the query and to each earlier query) but its output is not
    normalised again: with zero attention (as the behaviour branches use, the zero vector's
    logit a learned threshold, 0 at the start) a history with no earlier query like this
    one gives a shorter vector, and a LayerNorm would scale that mixture of unrelated
    queries up to a full row of every query and of q_mix. All means and the attention are
    masked, so padding never changes the output.

    With `use_mgs=False` (the paper's ablation) the query is only the (normalised) mean of
    its word embeddings, repeated six times: the rest of the network (six query slots in each
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
            # The zero vector's logit in the attention over earlier queries, learned: how
            # like the query an earlier one must be to enter q_his_seq (0 at the start).
            self.his_threshold = self.add_weight(name="his_threshold", shape=(), initializer="zeros")
        # One LayerNorm per row: a mean of embeddings, a Transformer output and a sum of
        # five vectors have norms an order of magnitude apart, and unnormalised the largest
        # would dominate q_mix and every attention the rows take part in. q_his_seq is
        # attended on q_seg's scale and keeps its length (see the class docstring).
        rows = tuple(g for g in GRANULARITIES if g != "q_his_seq") if use_mgs else ("q_seg",)
        self.row_norms = {g: tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"{g}_norm") for g in rows}

    def call(self, inputs: dict, training=None):
        words, words_mask = inputs["words"], inputs["words_mask"]
        q_seg = masked_mean(words, words_mask)  # [b, d]
        norm = self.row_norms
        if not self.use_mgs:
            return tf.tile(norm["q_seg"](q_seg)[:, None, :], [1, len(GRANULARITIES), 1])

        q_1gram = masked_mean(inputs["chars"], inputs["chars_mask"])
        q_2gram = masked_mean(inputs["bigrams"], inputs["bigrams_mask"])

        # Positions past max_words can only be padding here; clamping keeps any longer
        # (padded) input valid without changing the real positions.
        length = tf.shape(words)[1]
        pos = tf.minimum(tf.range(length), self.max_words - 1)
        x = words + tf.gather(self.positions, pos)[None]
        for block in self.blocks:
            x = block(x, mask=words_mask, training=training)
        q_seg_seq = masked_mean(x, words_mask)

        rows = {"q_1gram": q_1gram, "q_2gram": q_2gram, "q_seg": q_seg, "q_seg_seq": q_seg_seq}
        rows = {g: norm[g](v) for g, v in rows.items()}

        his, his_mask = inputs["his"], inputs["his_mask"]
        q_his = masked_mean(his, his_mask)  # [b, H, d]
        q_his = tf.reshape(norm["q_seg"](tf.reshape(q_his, [-1, self.dim])), tf.shape(q_his))  # on q_seg's scale
        has_query = tf.reduce_any(his_mask, axis=-1)  # [b, H]
        # No earlier query at all: every weight goes to the zero vector, q_his_seq is 0.
        rows["q_his_seq"] = zero_attention(rows["q_seg"][:, None, :], q_his, has_query,
                                           zero_logit=self.his_threshold)[0][:, 0, :]
        rows["q_mix"] = norm["q_mix"](tf.add_n(list(rows.values())))
        return tf.stack([rows[g] for g in GRANULARITIES], axis=1)

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


# --------------------------------------------------------------------------------------
# The user's behaviours, encoded per time scale and attended to by the query (MGDSPR 3.3).
#
# Each branch ends in `zero_attention` with the six Q_mgs vectors as queries, giving
# [b, 6, d]: H_real (real-time, same session), H_short (10 days), H_long (a month).
# --------------------------------------------------------------------------------------


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
    """Real-time branch: LSTM layers with residual connections and dropout (the paper's
    one dropout), multi-head self-attention, then zero attention with the query.

    queries [b, Q, d], behaviours [b, L, d] (most recent first, right-padded), mask [b, L]
    -> H_real [b, Q, d].

    The LSTM reads the session in time order (oldest to newest): each sequence's real
    part is reversed in place, so padding stays at the end and never reaches a real step.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        lstm_layers: int = 2,
        dropout: float = 0.2,
        unroll: bool = False,
        attention_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.dim, self.num_heads, self.lstm_layers, self.dropout, self.unroll = (
            dim,
            num_heads,
            lstm_layers,
            dropout,
            unroll,
        )
        self.attention_dropout = attention_dropout
        # model.fast's LSTM: the input projection of every step in one matmul before the
        # loop and the recurrent kernel read once per call (Keras' RNN reads every weight
        # from the parameter servers at every step). Not tf.keras.layers.LSTM: its fused
        # function asks to colocate its weights, which fails once a ParameterServerStrategy
        # has put them on different parameter servers. Unrolled (a flat graph for FLOP
        # counting), the Keras RNN over an LSTMCell; both keep the weights at `cell.*`.
        self.lstms = [
            keras_lstm(dim, f"lstm_{i}", unroll=True) if unroll else LSTM(dim, name=f"lstm_{i}")
            for i in range(lstm_layers)
        ]
        self.drops = [tf.keras.layers.Dropout(dropout) for _ in range(lstm_layers)]
        self.self_attention = SelfAttentionBlock(dim, num_heads, attention_dropout, name="self_attention")

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
            "attention_dropout": self.attention_dropout,
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
    leaf categories and brands, each mean-pooled to one vector and projected (one dense
    layer per sequence, like the other branches' behaviour projection, so the query can
    learn which sequence to read), then zero attention with the query over those vectors.

    queries [b, Q, d], sequences: list of (embeddings [b, L, d], mask [b, L]) ->
    H_long [b, Q, d]. A sequence with no real element is masked out entirely."""

    def __init__(self, dim: int, num_sequences: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.num_sequences = dim, num_sequences
        self.projections = [tf.keras.layers.Dense(dim, name=f"project_{i}") for i in range(num_sequences)]

    def call(self, queries, sequences):
        if len(sequences) != self.num_sequences:
            raise ValueError(f"expected {self.num_sequences} long-term sequences, got {len(sequences)}")
        pooled = tf.stack([p(masked_mean(e, m)) for p, (e, m) in zip(self.projections, sequences)], axis=1)  # [b, S, d]
        present = tf.stack([tf.reduce_any(m, axis=-1) for _, m in sequences], axis=1)  # [b, S]
        return zero_attention(queries, pooled, present)[0]

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "num_sequences": self.num_sequences}


# --------------------------------------------------------------------------------------
# Fusion of semantics and personalisation (MGDSPR 3.4): [CLS], Q_mgs, H_real, H_short,
# H_long -> the user-query embedding H_qu.
# --------------------------------------------------------------------------------------


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

    def sequence(self, parts):
        """The first block's input: [CLS] then the parts, with their positions [b, 1 + slots, d]."""
        x = tf.concat(list(parts), axis=1)
        cls = tf.tile(self.cls[None, None, :], [tf.shape(x)[0], 1, 1])
        return tf.concat([cls, x], axis=1) + self.positions[None]

    def call(self, parts, training=None):
        x = self.sequence(parts)
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


# --------------------------------------------------------------------------------------
# The item tower's title term (MGDSPR 3.5): H_item = e_id + tanh(W_t * mean(title words)).
#
# The paper found LSTM or Transformer title encoders worse than this mean pooling, since
# titles are keyword stacks without grammar.
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Relevance-improving hard negatives, I_mix (MGDSPR 3.6).
#
# For each query the N sampled negatives it scores highest (the ones it confuses with the
# positive) are mixed with the positive, I_mix = alpha * i+ + (1 - alpha) * I_hard with
# alpha ~ U(a, b) per negative, and added to the softmax denominator. Alpha near 1 puts a
# mixture close to the positive: a harder negative that forces finer distinctions (the
# paper's "relevance" gain). Under log-Q correction a mixture's logit is the same mixture
# of the positive's and the hard negative's corrected logits (model/loss.py).
#
# Since scores are dot products, <q, I_mix> = alpha <q, i+> + (1 - alpha) <q, I_hard>: the
# loss uses `hard_negative_mix` on scores and never materialises the [b, N, d] mixtures;
# `HardNegativeMix` builds the vectors for inspection and tests.
# --------------------------------------------------------------------------------------


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
    select_by=None,
) -> dict:
    """Selects the top-`num` usable negatives per query and mixes their scores.

    scores [b, P] = <q, candidate> for the P sampled candidates (or logits: the mix is
    linear); positive_scores [b] = <q, i+>; usable [b, P] bool (False for the positive
    itself and accidental hits, i.e. any candidate with the positive's item id).
    `select_by` [b, P] ranks the candidates instead of `scores` (the loss ranks by
    similarity and mixes corrected logits); `alphas` [b, N] overrides the U(a, b) draws
    (tests); N = min(num, P).

    Returns a dict of [b, N] tensors: `indices` (into P, best first), `valid` (False where
    a row had fewer than N usable negatives), `alphas`, `hard_scores` (<q, I_hard>) and
    `mix_scores` (<q, I_mix>)."""
    n = _num_hard(num, scores)
    rank = scores if select_by is None else tf.cast(select_by, scores.dtype)
    masked = tf.where(usable, rank, tf.fill(tf.shape(rank), tf.constant(float("-inf"), scores.dtype)))
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


__all__ = [
    "GRANULARITIES",
    "MASK_LOGIT",
    "BehaviourEmbedding",
    "ConcatFusion",
    "Embeddings",
    "FusionTransformer",
    "HardNegativeMix",
    "ItemTitleEncoder",
    "LongTermBehaviour",
    "MultiGrainedSemanticUnit",
    "MultiHeadSelfAttention",
    "RealTimeBehaviour",
    "SelfAttentionBlock",
    "ShortTermBehaviour",
    "TransformerBlock",
    "ZeroAttention",
    "hard_negative_mix",
    "masked_mean",
    "tower_output",
    "trim_padding",
    "zero_attention",
]
