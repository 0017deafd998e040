"""MGDSPR: the user (query + behaviours) tower, the item tower and the retrieval loss.

    lookup = Lookup("OUT/vocab")
    model = build_model(config, lookup.table_sizes)   # inside strategy.scope() when distributed
    model.compile(make_optimizer(config))
    model.fit(dataset.map(lookup))                    # dicts of ids, see MGDSPR.compute_loss

    users = model.user_tower(ids)                     # [b, d]
    items = model.item_tower(ids)                     # [b, d]

Both towers take dicts of int64 ids (`model.lookup.Lookup` output) and ignore features
they do not use, so one parsed example feeds either.
"""
from __future__ import annotations

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tensorflow_recommenders as tfrs

from features.spec import (
    ITEM_FEATURES,
    ITEM_FIELDS,
    MAX_HIS_QUERY_WORDS,
    SAMPLED_ITEM_PREFIX,
    USER_FEATURES,
)
from features.vocab import VOCABS
from model.config import MGDSPRConfig, make_optimizer
from model.layers import (
    BehaviourEmbedding,
    ConcatFusion,
    Embeddings,
    FusionTransformer,
    ItemTitleEncoder,
    LongTermBehaviour,
    MultiGrainedSemanticUnit,
    RealTimeBehaviour,
    ShortTermBehaviour,
    tower_output,
    trim_padding,
)
from model.fast import unique_lookup
from model.loss import NEGATIVE_LOG_Q, RetrievalLoss

# The paper's four long-term sequences (item ids, shops, leaf categories, brands).
LONG_TERM_FIELDS = ("item_id", "shop", "leaf_cat", "brand")
ITEM_LOG_Q = "item_log_q"


class UserTower(tf.keras.Model):
    """User-query embedding H_qu [b, d] from a dict of ids:
    query_chars [b, 32], query_bigrams [b, 32], query_words [b, 12], his_queries
    [b, 10, 8], rt_* [b, 50], st_* [b, 100], lt_* [b, 100] (lengths from features.spec;
    any length works, padding id 0 is masked everywhere).

    Q_mgs [b, 6, d] -> H_real, H_short, H_long [b, 6, d] -> fusion -> [b, d], unit length
    when `config.score_scale` > 0 (the score is then a scaled cosine)."""

    def __init__(self, config: MGDSPRConfig, embeddings: Embeddings, name: str = "user_tower", **kwargs):
        super().__init__(name=name, **kwargs)
        d, c = config.embedding_dim, config
        self.config = config
        self.embeddings = embeddings
        drop = c.attention_dropout
        self.mgs = MultiGrainedSemanticUnit(
            d, c.num_heads, c.transformer_ff_dim, c.query_transformer_layers, drop, c.use_mgs, name="mgs"
        )
        self.behaviour = BehaviourEmbedding(d, name="behaviour_embedding")
        self.real_time = RealTimeBehaviour(
            d, c.num_heads, c.lstm_layers, c.dropout, c.lstm_unroll, drop, name="real_time"
        )
        self.short_term = ShortTermBehaviour(d, c.num_heads, drop, name="short_term")
        self.long_term = LongTermBehaviour(d, len(LONG_TERM_FIELDS), name="long_term")
        if c.use_trm:
            self.fusion = FusionTransformer(
                d, c.num_heads, c.transformer_ff_dim, c.fusion_transformer_layers, drop, name="fusion"
            )
        else:
            self.fusion = ConcatFusion(d, name="fusion")

    def query_semantics(self, feats: dict, training=None) -> tf.Tensor:
        """Q_mgs [b, 6, d]."""
        emb = self.embeddings.embed
        words, words_mask = emb(feats, "query_words")
        inputs = {"words": words, "words_mask": words_mask}
        if self.config.use_mgs:
            inputs["chars"], inputs["chars_mask"] = emb(feats, "query_chars")
            inputs["bigrams"], inputs["bigrams_mask"] = emb(feats, "query_bigrams")
            inputs["his"], inputs["his_mask"] = emb(feats, "his_queries")
        return self.mgs(inputs, training=training)

    def trimmed(self, feats: dict, prefix: str, fields) -> dict:
        """The `prefix_*` sequences of `feats` cut to the batch's longest real one (same
        outputs, less work); an unrolled LSTM needs the full static length."""
        names = [f"{prefix}_{f}" for f in fields]
        if self.config.lstm_unroll and prefix == "rt":
            return {n: feats[n] for n in names}
        return dict(zip(names, trim_padding(*(feats[n] for n in names))))

    def behaviours(self, feats: dict, prefix: str):
        """Behaviour vectors [b, L, d] and mask [b, L] of sequence `prefix` (rt, st)."""
        seq = self.trimmed(feats, prefix, ITEM_FIELDS)
        fields = [self.embeddings.embed(seq, f"{prefix}_{f}") for f in ITEM_FIELDS]
        return self.behaviour([e for e, _ in fields]), fields[0][1]

    def parts(self, feats: dict, training=None) -> dict:
        """The fusion's inputs: {"q_mgs", "h_real", "h_short", "h_long"}, each [b, 6, d]."""
        q = self.query_semantics(feats, training)
        rt, rt_mask = self.behaviours(feats, "rt")
        st, st_mask = self.behaviours(feats, "st")
        long_term = self.trimmed(feats, "lt", LONG_TERM_FIELDS)
        lt = [self.embeddings.embed(long_term, f"lt_{f}") for f in LONG_TERM_FIELDS]
        return {
            "q_mgs": q,
            "h_real": self.real_time(q, rt, rt_mask, training=training),
            "h_short": self.short_term(q, st, st_mask, training=training),
            "h_long": self.long_term(q, lt),
        }

    def fuse(self, parts: dict, training=None):
        """The user vector from the fusion's inputs (`parts`)."""
        fused = self.fusion([parts["q_mgs"], parts["h_real"], parts["h_short"], parts["h_long"]], training=training)
        return tower_output(fused, self.config.score_scale)

    def call(self, feats: dict, training=None):
        return self.fuse(self.parts(feats, training), training)


class ItemTower(tf.keras.Model):
    """H_item = e_id + tanh(W_t * mean(title word embeddings)) [b, d] from a dict with
    item_id [b] and title_words [b, 32] ids, unit length when `config.score_scale` > 0."""

    def __init__(self, config: MGDSPRConfig, embeddings: Embeddings, name: str = "item_tower", **kwargs):
        super().__init__(name=name, **kwargs)
        self.embeddings = embeddings
        self.score_scale = config.score_scale
        self.title = ItemTitleEncoder(config.embedding_dim, name="title")

    def call(self, feats: dict, training=None):
        e_id, _ = self.embeddings.embed(feats, "item_id")
        words, mask = self.embeddings.embed(feats, "title_words")
        return tower_output(self.title(e_id, words, mask), self.score_scale)


class MGDSPR(tfrs.Model):
    """The two towers and the retrieval loss.

    `compute_loss(inputs)` takes one dict of ids:
      user features [b, ...] (USER_FEATURES), the positive item's features [b, ...]
      (ITEM_FEATURES), the batch's random catalog items `neg_<item feature>` [n, ...]
      (one set per batch, shared by all queries; may be absent), and optionally
      `item_log_q` [b] float32 = log of the positive item's share of training positives
      and `neg_item_log_q` [n] the same of the random items (for log-Q correction).
    Compile with `make_optimizer(config)`: it clips the global gradient norm at
    `config.clip_norm`. The reported `loss` is a metric (mean over the epoch's steps), so
    it aggregates correctly under ParameterServerStrategy."""

    def __init__(self, config: MGDSPRConfig, table_sizes: dict[str, int], name: str = "mgdspr", **kwargs):
        super().__init__(name=name, **kwargs)
        missing = sorted(set(VOCABS) - set(table_sizes))
        if missing:
            raise ValueError(f"table_sizes lacks vocabularies {missing}; pass Lookup(vocab_dir).table_sizes")
        self.config = config
        self.table_sizes = dict(table_sizes)
        self.embeddings = Embeddings(table_sizes, config.embedding_dim)
        if config.model == "mlp":
            from model.baseline import AlphaDNNUserTower

            self.user_tower = AlphaDNNUserTower(config, self.embeddings)
        else:
            self.user_tower = UserTower(config, self.embeddings)
        self.item_tower = ItemTower(config, self.embeddings)
        self.catalog_size = config.catalog_size or (table_sizes["item_id"] - 1 - VOCABS["item_id"].oov_buckets)
        self.retrieval_loss = RetrievalLoss(config, max(self.catalog_size, 1))
        # Hashed or pre-mapped item ids: log q by row, a non-trainable [rows, 1] table that a
        # parameter-server strategy shards like the embeddings (row_log_q fills it).
        self.item_log_q, self.item_log_q_filled = None, False
        if config.item_ids != "vocab" and config.log_q_correction:
            self.item_log_q = tf.keras.layers.Embedding(
                table_sizes["item_id"], 1, embeddings_initializer="zeros", trainable=False, name="item_log_q"
            )
        # Metrics, not bare tensors: under ParameterServerStrategy Keras reads epoch
        # results from metric variables, a step's return value is only the last worker's.
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker] + [m for m in super().metrics if m is not self.loss_tracker]

    def call(self, inputs, training=False):
        """-> (user embeddings [b, d], positive item embeddings [b, d])."""
        return self.user_tower(inputs, training=training), self.item_tower(inputs, training=training)

    def embed_items(self, inputs: dict, training=False):
        """Positives and the sampled random items in one item-tower pass.
        -> (positives [b, d], negatives [n, d] or None)."""
        negatives = {
            name: inputs[SAMPLED_ITEM_PREFIX + name] for name in ("item_id", "title_words")
            if SAMPLED_ITEM_PREFIX + name in inputs
        }
        if not negatives:
            return self.item_tower(inputs, training=training), None
        if len(negatives) != 2:
            raise KeyError(f"sampled items need both {SAMPLED_ITEM_PREFIX}item_id and {SAMPLED_ITEM_PREFIX}title_words")
        b = tf.shape(inputs["item_id"])[0]
        both = {name: tf.concat([inputs[name], neg], axis=0) for name, neg in negatives.items()}
        items = self.item_tower(both, training=training)
        return items[:b], items[b:]

    def compute_loss(self, inputs, training: bool = False, alphas=None) -> tf.Tensor:
        if isinstance(inputs, tuple):  # (features,) from Keras' data adapter
            inputs = inputs[0]
        query = self.user_tower(inputs, training=training)
        positives, negatives = self.embed_items(inputs, training)
        negative_ids = inputs.get(SAMPLED_ITEM_PREFIX + "item_id") if negatives is not None else None
        item_log_q, negative_log_q = inputs.get(ITEM_LOG_Q), inputs.get(NEGATIVE_LOG_Q)
        if self.item_log_q is not None and item_log_q is None:
            item_log_q = self.log_q_of(inputs["item_id"])
            negative_log_q = self.log_q_of(negative_ids) if negatives is not None else None
        return self.retrieval_loss(
            query,
            positives,
            inputs["item_id"],
            negatives,
            negative_ids,
            item_log_q=item_log_q,
            alphas=alphas,
            negative_log_q=negative_log_q if negatives is not None else None,
        )

    def log_q_of(self, item_ids: tf.Tensor) -> tf.Tensor:
        """log q [n] of item-id rows [n] from the row table (hashed or pre-mapped ids)."""
        return tf.reshape(unique_lookup(self.item_log_q, item_ids), [-1])

    def set_item_log_q(self, values) -> None:
        """Fills the row table with `model.data.row_log_q`'s [rows] array, once the model is
        built (`model.rundir.build(..., data_dir)` does); training refuses to start without."""
        if self.item_log_q is None:
            raise ValueError("this model takes log q from its input (item_ids='vocab') or has no log-Q correction")
        rows = self.table_sizes["item_id"]
        if len(values) != rows:
            raise ValueError(f"item log q has {len(values)} rows, the item-id table {rows}")
        self.item_log_q.embeddings.assign(tf.reshape(tf.constant(values, tf.float32), [rows, 1]))
        self.item_log_q_filled = True

    def train_step(self, inputs):
        if self.item_log_q is not None and not self.item_log_q_filled:
            # All zeros, the correction would silently vanish.
            raise ValueError("the item log-q table is empty: fill it with set_item_log_q(row_log_q(...)) before "
                             "training (model.rundir.build(config, table_sizes, data_dir) does)")
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            if self.losses:  # regularisers, none by default
                loss += tf.add_n([tf.reduce_sum(x) for x in self.losses])
        variables = self.trainable_variables
        # The optimiser clips at the global norm (make_optimizer's global_clipnorm).
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.loss_tracker.update_state(loss)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, inputs):
        self.loss_tracker.update_state(self.compute_loss(inputs, training=False))
        return {m.name: m.result() for m in self.metrics}

    def dummy_inputs(self, batch: int = 2, negatives: int = 2) -> dict:
        """All-padding ids of the right shapes (builds every variable eagerly)."""
        out = {}
        for f in USER_FEATURES + ITEM_FEATURES:
            shape = [batch] + list(f.shape)
            if f.name == "his_queries":
                shape.append(MAX_HIS_QUERY_WORDS)
            out[f.name] = tf.zeros(shape, tf.int64)
        for f in ITEM_FEATURES:
            out[SAMPLED_ITEM_PREFIX + f.name] = tf.zeros([negatives] + list(f.shape), tf.int64)
        return out

    def get_config(self):
        return {"config": self.config.to_json(), "table_sizes": self.table_sizes}


def build_model(config: MGDSPRConfig, table_sizes: dict[str, int]) -> MGDSPR:
    """The model with every variable created now (call inside `strategy.scope()` when
    distributed, so the tables are placed and sharded by the strategy)."""
    model = MGDSPR(config, table_sizes)
    dummy = model.dummy_inputs()
    model.user_tower(dummy, training=False)
    model.item_tower(dummy, training=False)
    if model.item_log_q is not None:
        model.item_log_q(dummy["item_id"])
    return model


__all__ = ["ITEM_LOG_Q", "MGDSPR", "ItemTower", "UserTower", "build_model", "make_optimizer"]
