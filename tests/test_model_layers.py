"""Layer shapes, masking (padding never changes an embedding) and zero attention."""
import numpy as np
import pytest
import tensorflow as tf

from features.spec import ITEM_FEATURES, MAX_HIS_QUERY_WORDS, SAMPLED_ITEM_PREFIX, USER_FEATURES
from model.config import ABLATIONS, MGDSPRConfig
from model.layers import (
    BehaviourEmbedding,
    ConcatFusion,
    Embeddings,
    FusionTransformer,
    ItemTitleEncoder,
    LongTermBehaviour,
    MultiGrainedSemanticUnit,
    MultiHeadSelfAttention,
    RealTimeBehaviour,
    ShortTermBehaviour,
    TransformerBlock,
    ZeroAttention,
    masked_mean,
    zero_attention,
)
from model.mgdspr import build_model

D, HEADS, B = 16, 2, 3
SIZES = {"word": 60, "char": 40, "bigram": 50, "item_id": 80, "leaf_cat": 12, "top_cat": 6, "brand": 10, "shop": 11}
TINY = dict(embedding_dim=D, num_heads=HEADS, transformer_ff_dim=32, batch_size=8, num_random_negatives=4,
            hard_negatives=4)


def rand(*shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def lengths_mask(lengths, size):
    return tf.sequence_mask(lengths, size)


def test_small_layers_shapes():
    x, mask = rand(B, 7, D), lengths_mask([7, 3, 0], 7)
    assert masked_mean(x, mask).shape == (B, D)
    assert np.allclose(masked_mean(x, mask).numpy()[2], 0.0)  # empty -> zero vector, not NaN
    assert MultiHeadSelfAttention(D, HEADS)(x, mask=mask).shape == (B, 7, D)
    assert TransformerBlock(D, HEADS, 32)(x, mask=mask).shape == (B, 7, D)
    fields = [rand(B, 7, D, seed=i) for i in range(5)]
    assert BehaviourEmbedding(D)(fields).shape == (B, 7, D)
    queries = rand(B, 6, D, seed=9)
    out, weights = ZeroAttention()(queries, x, mask, return_weights=True)
    assert out.shape == (B, 6, D) and weights.shape == (B, 6, 8)
    np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-6)
    assert RealTimeBehaviour(D, HEADS)(queries, x, mask).shape == (B, 6, D)
    assert ShortTermBehaviour(D, HEADS)(queries, x, mask).shape == (B, 6, D)
    assert LongTermBehaviour(D)(queries, [(x, mask), (x, mask), (x, mask), (x, mask)]).shape == (B, 6, D)
    parts = [rand(B, 6, D, seed=i) for i in range(4)]
    assert FusionTransformer(D, HEADS, 32)(parts).shape == (B, D)
    assert ConcatFusion(D)(parts).shape == (B, D)
    assert ItemTitleEncoder(D)(rand(B, D), x, mask).shape == (B, D)
    emb = Embeddings(SIZES, D)
    assert emb.lookup("word", tf.constant([[1, 2]])).shape == (1, 2, D)


@pytest.mark.parametrize("use_mgs", [True, False])
def test_multi_grained_semantic_unit_shape_and_parts(use_mgs):
    mgs = MultiGrainedSemanticUnit(D, HEADS, 32, use_mgs=use_mgs)
    inputs = {
        "chars": rand(B, 9, D, seed=1), "chars_mask": lengths_mask([9, 4, 1], 9),
        "bigrams": rand(B, 8, D, seed=2), "bigrams_mask": lengths_mask([8, 3, 0], 8),
        "words": rand(B, 5, D, seed=3), "words_mask": lengths_mask([5, 2, 1], 5),
        "his": rand(B, 4, 3, D, seed=4), "his_mask": tf.sequence_mask([[3, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]], 3),
    }
    q = mgs(inputs).numpy()
    assert q.shape == (B, 6, D)
    q_seg = masked_mean(inputs["words"], inputs["words_mask"]).numpy()
    if not use_mgs:
        np.testing.assert_allclose(q, np.repeat(layer_norm(q_seg)[:, None], 6, axis=1), rtol=1e-4, atol=1e-5)
        return
    # Every row is its part, layer-normalised (gain 1, bias 0 at initialisation).
    np.testing.assert_allclose(q[:, 0], layer_norm(masked_mean(inputs["chars"], inputs["chars_mask"]).numpy()),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(q[:, 2], layer_norm(q_seg), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(q[:, 5], layer_norm(q[:, :5].sum(1)), rtol=1e-4, atol=1e-4)  # q_mix: the sum
    assert np.allclose(q[2, 4], 0.0)  # no historical query: q_his_seq is zero
    # One earlier query: zero attention between it and the zero vector, both rows on q_seg's scale.
    earlier = layer_norm(inputs["his"].numpy()[1, 0, :2].mean(0))
    weight = 1 / (1 + np.exp(-layer_norm(q_seg[1]) @ earlier / np.sqrt(D)))
    np.testing.assert_allclose(q[1, 4], weight * earlier, rtol=1e-4, atol=1e-4)


def layer_norm(x, eps=1e-6):
    x = np.asarray(x, np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def test_the_six_query_rows_are_on_one_scale():
    """Means of a few embeddings (norm < 1) and a Transformer output (norm ~ sqrt(d)) must
    not differ by an order of magnitude, or q_mix and every attention over the rows would
    read one granularity only."""
    d = 32
    mgs = MultiGrainedSemanticUnit(d, HEADS, 64)
    small = lambda *shape, seed: tf.constant(  # noqa: E731  (embedding rows: std 1/sqrt(d))
        np.random.default_rng(seed).normal(scale=d**-0.5, size=shape).astype(np.float32))
    inputs = {
        "chars": small(B, 9, d, seed=1), "chars_mask": lengths_mask([9, 4, 6], 9),
        "bigrams": small(B, 8, d, seed=2), "bigrams_mask": lengths_mask([8, 3, 5], 8),
        "words": small(B, 5, d, seed=3), "words_mask": lengths_mask([5, 2, 3], 5),
        "his": small(B, 4, 3, d, seed=4), "his_mask": tf.sequence_mask([[3, 1, 0, 0], [2, 2, 0, 0], [1, 0, 0, 0]], 3),
    }
    norms = np.linalg.norm(mgs(inputs).numpy(), axis=-1)  # [b, 6]
    normalised = norms[:, [0, 1, 2, 3, 5]]
    assert normalised.max() / normalised.min() < 1.5, norms
    # The history row is on the same scale at most: a weighted part of q_seg-scaled queries.
    assert (norms[:, 4] <= 1.01 * norms[:, 2]).all() and (norms[:, 4] > 0).all(), norms


def test_history_unlike_the_query_gives_a_short_history_row():
    """q_his_seq carries an earlier query like this one at (almost) full length and a
    history of unrelated queries only in part, so it cannot pull every query towards the
    user's other intents as a full row of q_mix."""
    d = 32
    mgs = MultiGrainedSemanticUnit(d, HEADS, 64)
    rng = np.random.default_rng(0)
    words = rng.normal(scale=d**-0.5, size=(2, 3, d)).astype(np.float32)
    his = rng.normal(scale=d**-0.5, size=(2, 4, 3, d)).astype(np.float32)
    his[0, 2] = words[0]  # user 0 searched this very query before; user 1 only other things
    mask = lambda *shape: tf.ones(shape, tf.bool)  # noqa: E731
    inputs = {"chars": tf.constant(words), "chars_mask": mask(2, 3), "bigrams": tf.constant(words),
              "bigrams_mask": mask(2, 3), "words": tf.constant(words), "words_mask": mask(2, 3),
              "his": tf.constant(his), "his_mask": mask(2, 4, 3)}
    q = mgs(inputs).numpy()
    full = np.linalg.norm(q[:, 2], axis=-1)  # the q_seg row
    history = np.linalg.norm(q[:, 4], axis=-1)
    assert history[0] > 0.9 * full[0], (history, full)
    assert history[1] < 0.75 * full[1], (history, full)
    # A higher learned threshold keeps the matching query and shuts the unrelated ones out.
    mgs.his_threshold.assign(3.0)
    q = mgs(inputs).numpy()
    history = np.linalg.norm(q[:, 4], axis=-1)
    assert history[0] > 0.9 * full[0] and history[1] < 0.25 * full[1], (history, full)


def test_zero_attention_sends_irrelevant_history_to_the_zero_vector():
    # Queries live in span(e0..e5) with a large +e0 component; behaviours are orthogonal
    # to that subspace except for a -e0 component: every behaviour scores far below 0.
    rng = np.random.default_rng(0)
    q = np.zeros((2, 6, D), np.float32)
    q[..., 0] = 8.0
    q[..., 1:6] = rng.normal(size=(2, 6, 5))
    v = np.zeros((2, 5, D), np.float32)
    v[..., 0] = -8.0
    v[..., 6:] = rng.normal(size=(2, 5, D - 6))
    mask = lengths_mask([5, 3], 5)
    out, weights = zero_attention(tf.constant(q), tf.constant(v), mask)
    assert np.all(weights.numpy()[..., 0] > 1 - 1e-6)
    empty, _ = zero_attention(tf.constant(q), tf.constant(v), lengths_mask([0, 0], 5))
    assert np.allclose(empty.numpy(), 0.0)  # an empty history gives exactly nothing
    np.testing.assert_allclose(out.numpy(), empty.numpy(), atol=1e-5)
    # The same through the long-term branch: irrelevant history == no history.
    lt = LongTermBehaviour(D)
    lt(tf.constant(q), [(tf.constant(v), mask)] * 4)
    for dense in lt.projections:  # identity projections: the values as constructed
        dense.set_weights([np.eye(D, dtype=np.float32), np.zeros(D, np.float32)])
    irrelevant = lt(tf.constant(q), [(tf.constant(v), mask)] * 4).numpy()
    nothing = lt(tf.constant(q), [(tf.constant(v), lengths_mask([0, 0], 5))] * 4).numpy()
    np.testing.assert_allclose(irrelevant, nothing, atol=1e-5)
    # A relevant behaviour takes the mass instead.
    v[0, 1, :6] = q[0, 0, :6]
    _, weights = zero_attention(tf.constant(q), tf.constant(v), mask)
    assert weights.numpy()[0, 0, 2] > 0.99


def test_exactly_orthogonal_behaviours_tie_with_the_zero_vector():
    # <q, 0> = 0 is the threshold: a behaviour orthogonal to the query scores the same,
    # so it neither wins nor loses against "no behaviour".
    q = np.zeros((1, 6, D), np.float32)
    q[..., :4] = np.random.default_rng(1).normal(size=(1, 6, 4))
    v = np.zeros((1, 3, D), np.float32)
    v[..., 4:] = np.random.default_rng(2).normal(size=(1, 3, D - 4))
    _, weights = zero_attention(tf.constant(q), tf.constant(v), lengths_mask([3], 3))
    np.testing.assert_allclose(weights.numpy(), 0.25, rtol=1e-6)


def random_ids(model, b=4, n=3, seed=0):
    """A batch of ids where each sequence holds a random number of real tokens, then
    padding (some entirely empty)."""
    rng = np.random.default_rng(seed)
    vocab_of = {f.name: f.vocab for f in USER_FEATURES + ITEM_FEATURES}
    out = {}
    for name, zeros in model.dummy_inputs(b, n).items():
        shape = zeros.shape.as_list()
        base = name[len(SAMPLED_ITEM_PREFIX):] if name.startswith(SAMPLED_ITEM_PREFIX) else name
        ids = rng.integers(1, SIZES[vocab_of[base]], size=shape)
        if len(shape) >= 2:
            length = shape[-1]
            keep = rng.integers(0, length + 1, size=shape[:-1])
            keep[0] = np.minimum(keep[0] + 1, length)  # the first row always has something
            ids = np.where(np.arange(length) < keep[..., None], ids, 0)
        out[name] = tf.constant(ids, tf.int64)
    return out


def pad(ids: dict, extra: int = 3) -> dict:
    """Every sequence feature with `extra` more padding positions (both axes of his_queries)."""
    out = {}
    for name, v in ids.items():
        if v.shape.rank == 2:
            v = tf.pad(v, [[0, 0], [0, extra]])
        elif v.shape.rank == 3:
            v = tf.pad(v, [[0, 0], [0, extra], [0, extra]])
        out[name] = v
    return out


@pytest.mark.parametrize("ablation", ["mgdspr", "no_trm", "mlp"])
def test_padding_never_changes_user_or_item_embeddings(ablation):
    cfg = MGDSPRConfig(**TINY, **ABLATIONS[ablation])
    model = build_model(cfg, SIZES)
    ids = random_ids(model)
    user, item = model.user_tower(ids, training=False).numpy(), model.item_tower(ids, training=False).numpy()
    padded = pad(ids)
    assert padded["rt_item_id"].shape[1] == ids["rt_item_id"].shape[1] + 3
    assert padded["his_queries"].shape[2] == MAX_HIS_QUERY_WORDS + 3
    np.testing.assert_allclose(model.user_tower(padded, training=False).numpy(), user, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.item_tower(padded, training=False).numpy(), item, rtol=1e-4, atol=1e-5)
    # Whatever sits in padded positions' ids is never read: only id 0 means padding, and
    # changing a *real* token must change the embedding (the test above can fail).
    changed = dict(ids, query_words=tf.tensor_scatter_nd_update(ids["query_words"], [[0, 0]], [5]))
    if int(ids["query_words"][0, 0]) != 5:
        assert not np.allclose(model.user_tower(changed, training=False).numpy()[0], user[0])


def test_user_tower_outputs_and_empty_history_gives_zero_branches():
    model = build_model(MGDSPRConfig(**TINY), SIZES)
    ids = random_ids(model, b=2)
    for prefix in ("rt", "st", "lt"):
        for field in ("item_id", "leaf_cat", "top_cat", "brand", "shop"):
            ids[f"{prefix}_{field}"] = tf.zeros_like(ids[f"{prefix}_{field}"])
    parts = model.user_tower.parts(ids, training=False)
    assert {k: v.shape for k, v in parts.items()} == {k: (2, 6, D) for k in ("q_mgs", "h_real", "h_short", "h_long")}
    for name in ("h_real", "h_short", "h_long"):
        assert np.allclose(parts[name].numpy(), 0.0), name
    assert model.user_tower(ids).shape == (2, D)


def test_dropout_is_active_only_in_training():
    model = build_model(MGDSPRConfig(**TINY), SIZES)
    ids = random_ids(model)
    a = model.user_tower(ids, training=False).numpy()
    np.testing.assert_allclose(model.user_tower(ids, training=False).numpy(), a)
    assert not np.allclose(model.user_tower(ids, training=True).numpy(), a)


def test_dropout_sits_on_the_real_time_lstm_only_by_default():
    """As in the paper: a query and its history without a real-time session train without
    dropout (no dropped attention over 1-3 words, no dropped [CLS]); attention_dropout
    turns it on everywhere."""
    model = build_model(MGDSPRConfig(**TINY), SIZES)
    ids = random_ids(model)
    for field in ("item_id", "leaf_cat", "top_cat", "brand", "shop"):
        ids[f"rt_{field}"] = tf.zeros_like(ids[f"rt_{field}"])
    np.testing.assert_allclose(model.user_tower(ids, training=True).numpy(),
                               model.user_tower(ids, training=False).numpy(), rtol=1e-5, atol=1e-6)
    dropping = build_model(MGDSPRConfig(**TINY, attention_dropout=0.3), SIZES)
    assert not np.allclose(dropping.user_tower(ids, training=True).numpy(), dropping.user_tower(ids, training=False).numpy())


@pytest.mark.parametrize("ablation", ["mgdspr", "no_trm", "no_mgs", "mlp"])
def test_towers_give_unit_vectors_so_scores_are_scaled_cosines(ablation):
    """The logit range is score_scale / tau whatever the last layer (a LayerNorm gives
    norm sqrt(d), a dense layer anything): the full model and its ablations differ in
    their architecture only."""
    model = build_model(MGDSPRConfig(**TINY, **ABLATIONS[ablation]), SIZES)
    ids = random_ids(model)
    for tower in (model.user_tower, model.item_tower):
        np.testing.assert_allclose(np.linalg.norm(tower(ids, training=False).numpy(), axis=-1), 1.0, rtol=1e-5)
    raw = build_model(MGDSPRConfig(**TINY, **ABLATIONS[ablation], score_scale=0), SIZES)
    assert not np.allclose(np.linalg.norm(raw.user_tower(ids, training=False).numpy(), axis=-1), 1.0, rtol=1e-3)


def test_item_embeddings_are_shared_with_behaviours():
    model = build_model(MGDSPRConfig(**TINY), SIZES)
    names = [v.name for v in model.trainable_variables if "item_id_embedding" in v.name]
    assert len(names) == 1, names  # one item-id table serves both towers
    assert model.user_tower.embeddings is model.item_tower.embeddings


def test_towers_export_as_a_savedmodel_and_give_the_same_vectors(tmp_path):
    model = build_model(MGDSPRConfig(**TINY), SIZES)
    ids = random_ids(model, b=2)
    user_ids = {f.name: ids[f.name] for f in USER_FEATURES}
    item_ids = {name: ids[name] for name in ("item_id", "title_words")}
    module = tf.Module()
    # Track the variables, not the Keras objects: no per-layer Keras tracing, a plain graph.
    module.weights = list(model.variables)
    module.users = tf.function(
        lambda x: model.user_tower(x, training=False),
        input_signature=[{k: tf.TensorSpec([None] + v.shape[1:], tf.int64) for k, v in user_ids.items()}],
    )
    module.items = tf.function(
        lambda x: model.item_tower(x, training=False),
        input_signature=[{k: tf.TensorSpec([None] + v.shape[1:], tf.int64) for k, v in item_ids.items()}],
    )
    path = str(tmp_path / "towers")
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.users(user_ids).numpy(), model.user_tower(user_ids).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.items(item_ids).numpy(), model.item_tower(item_ids).numpy(), rtol=1e-5, atol=1e-6)
