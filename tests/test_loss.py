"""The sampled softmax, hinge and hard-negative mix against plain NumPy references."""
import math

import numpy as np
import pytest
import tensorflow as tf

from model.config import MGDSPRConfig
from model.layers import HardNegativeMix, hard_negative_mix
from model.loss import RetrievalLoss, pairwise_hinge_loss, sampled_softmax_loss, sampling_log_q

D = 4


def batch(seed=0, b=5, n=4):
    """A small batch with accidental hits: positives 0 and 3 are the same item (7), and
    random item 1 is query 2's positive (9)."""
    rng = np.random.default_rng(seed)
    return {
        "query": rng.normal(size=(b, D)).astype(np.float32),
        "positives": rng.normal(size=(b, D)).astype(np.float32),
        "negatives": rng.normal(size=(n, D)).astype(np.float32),
        "positive_ids": np.array([7, 8, 9, 7, 11][:b], np.int64),
        "negative_ids": np.array([20, 9, 21, 22][:n], np.int64),
    }


def reference_softmax(x, tau=1.0, log_q=None, n_hard=0, alphas=None, hinge_margin=None):
    """Row by row, loop by loop: the loss as the paper and sampled-softmax theory state it."""
    cands = np.concatenate([x["positives"], x["negatives"]])
    ids = np.concatenate([x["positive_ids"], x["negative_ids"]])
    log_q = np.zeros(len(cands)) if log_q is None else log_q
    losses = []
    for r, q in enumerate(x["query"]):
        pos_score = float(q @ x["positives"][r])
        neg_scores, neg_logits = [], []
        for j, c in enumerate(cands):
            if j == r or ids[j] == x["positive_ids"][r]:
                continue  # the positive itself, or an accidental hit
            s = float(q @ c)
            neg_scores.append(s)
            neg_logits.append(s / tau - log_q[j])
        hard = sorted(range(len(neg_scores)), key=lambda k: -neg_scores[k])[:n_hard]
        if hinge_margin is not None:
            mixes = [alphas[r][k] * pos_score + (1 - alphas[r][k]) * neg_scores[h] for k, h in enumerate(hard)]
            terms = [max(0.0, hinge_margin - pos_score + s) for s in neg_scores + mixes]
            losses.append(sum(terms) / len(terms))
            continue
        pos_logit = pos_score / tau - log_q[r]
        # A mixture of the positive and a hard negative: the same mixture of their logits.
        mixes = [alphas[r][k] * pos_logit + (1 - alphas[r][k]) * neg_logits[h] for k, h in enumerate(hard)]
        logits = [pos_logit] + neg_logits + mixes
        losses.append(math.log(sum(math.exp(v) for v in logits)) - pos_logit)
    return np.array(losses)


def tf_loss(x, **kwargs):
    return sampled_softmax_loss(
        tf.constant(x["query"]),
        tf.constant(x["positives"]),
        tf.constant(x["positive_ids"]),
        tf.constant(x["negatives"]),
        tf.constant(x["negative_ids"]),
        **kwargs,
    ).numpy()


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_sampled_softmax_matches_reference_with_temperature_and_accidental_hits(tau):
    x = batch()
    np.testing.assert_allclose(tf_loss(x, temperature=tau), reference_softmax(x, tau), rtol=1e-5, atol=1e-6)


def test_accidental_hits_are_removed_not_counted_as_negatives():
    x = batch()
    with_hits = tf_loss(x)
    # Give the duplicates fresh ids: now they are negatives and every affected loss grows.
    x2 = dict(x, positive_ids=np.array([7, 8, 9, 70, 11]), negative_ids=np.array([20, 90, 21, 22]))
    without = tf_loss(x2)
    np.testing.assert_allclose(without, reference_softmax(x2), rtol=1e-5)
    assert np.all(without[[0, 2, 3]] > with_hits[[0, 2, 3]])
    np.testing.assert_allclose(without[[1, 4]], with_hits[[1, 4]], rtol=1e-6)


def test_log_q_correction_matches_reference():
    x = batch()
    item_log_q = np.log(np.array([0.05, 0.01, 0.02, 0.05, 0.001], np.float32))
    neg_log_q = np.log(np.array([0.0001, 0.02, 0.00001, 0.003], np.float32))
    catalog = 1000
    log_q = sampling_log_q(tf.constant(item_log_q), tf.constant(neg_log_q), catalog).numpy()
    b, n = 5, 4
    # One sample from two samplers: every candidate's expected count is b p_i + n / N.
    p = np.exp(np.concatenate([item_log_q, neg_log_q]))
    np.testing.assert_allclose(log_q, np.log(b * p + n / catalog), rtol=1e-5)
    expected = reference_softmax(x, 2.0, log_q=log_q)
    np.testing.assert_allclose(tf_loss(x, temperature=2.0, candidate_log_q=log_q), expected, rtol=1e-5)
    # The configured loss applies the same correction from item_log_q and neg_item_log_q.
    cfg = MGDSPRConfig(temperature=2.0, use_mix=False, score_scale=0)
    got = RetrievalLoss(cfg, catalog).per_example(
        x["query"], x["positives"], tf.constant(x["positive_ids"]), x["negatives"], tf.constant(x["negative_ids"]),
        item_log_q=tf.constant(item_log_q), negative_log_q=tf.constant(neg_log_q),
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    # Popular items are less of a negative once corrected: the loss changes.
    assert not np.allclose(expected, reference_softmax(x, 2.0))


def test_log_q_without_the_random_items_popularity_is_an_error():
    x = batch()
    cfg = MGDSPRConfig(use_mix=False)
    with pytest.raises(ValueError, match="neg_item_log_q"):
        RetrievalLoss(cfg, 1000).per_example(
            x["query"], x["positives"], tf.constant(x["positive_ids"]), x["negatives"], tf.constant(x["negative_ids"]),
            item_log_q=tf.zeros([5]),
        )


def test_log_q_with_hard_negatives_matches_reference_and_ignores_a_constant_shift():
    """Log-Q and I_mix together: the mixes are corrected like the logits they mix, so a
    constant added to every log Q (a different but equivalent normalisation) changes
    nothing, and the mixes keep their share of the denominator."""
    x = batch()
    alphas = np.random.default_rng(1).uniform(0.4, 0.6, size=(5, 3)).astype(np.float32)
    log_q = np.log(np.array([0.05, 0.01, 0.02, 0.05, 0.001, 0.004, 0.01, 0.0002, 0.03]) * 5)
    got = tf_loss(x, temperature=2.0, candidate_log_q=log_q, hard_negatives=3, alphas=alphas)
    np.testing.assert_allclose(got, reference_softmax(x, 2.0, log_q=log_q, n_hard=3, alphas=alphas), rtol=1e-5)
    shifted = tf_loss(x, temperature=2.0, candidate_log_q=log_q - 6.0, hard_negatives=3, alphas=alphas)
    np.testing.assert_allclose(shifted, got, rtol=1e-5)
    # The mixes' weight against the positive does not depend on the positive's own log Q.
    no_mix = tf_loss(x, temperature=2.0, candidate_log_q=log_q)
    no_mix_shifted = tf_loss(x, temperature=2.0, candidate_log_q=log_q - 6.0)
    np.testing.assert_allclose(got - no_mix, shifted - no_mix_shifted, rtol=1e-4, atol=1e-6)


def test_softmax_scores_are_scaled_cosines():
    """score_scale s: the configured softmax scores s * <q, i> / tau on unit vectors."""
    x = batch()
    unit = {k: x[k] / np.linalg.norm(x[k], axis=1, keepdims=True) for k in ("query", "positives", "negatives")}
    y = dict(x, **unit)
    cfg = MGDSPRConfig(temperature=2.0, use_mix=False, log_q_correction=False, score_scale=20.0)
    got = RetrievalLoss(cfg, 1000).per_example(
        y["query"], y["positives"], tf.constant(y["positive_ids"]), y["negatives"], tf.constant(y["negative_ids"]),
    ).numpy()
    np.testing.assert_allclose(got, reference_softmax(dict(y, query=20.0 * y["query"]), 2.0), rtol=1e-5)


def test_hard_negative_mix_in_the_denominator_matches_reference():
    x = batch()
    alphas = np.random.default_rng(1).uniform(0.4, 0.6, size=(5, 3)).astype(np.float32)
    expected = reference_softmax(x, 2.0, n_hard=3, alphas=alphas)
    got = tf_loss(x, temperature=2.0, hard_negatives=3, alphas=alphas)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all(got > tf_loss(x, temperature=2.0))  # more negatives, larger loss
    cfg = MGDSPRConfig(temperature=2.0, hard_negatives=3, log_q_correction=False, batch_size=5, num_random_negatives=4,
                       score_scale=0)
    configured = RetrievalLoss(cfg, 100).per_example(
        x["query"], x["positives"], tf.constant(x["positive_ids"]), x["negatives"], tf.constant(x["negative_ids"]),
        alphas=alphas,
    )
    np.testing.assert_allclose(configured.numpy(), expected, rtol=1e-5)


def test_in_batch_only_and_pairwise_hinge_match_reference():
    x = batch()
    only = sampled_softmax_loss(
        tf.constant(x["query"]), tf.constant(x["positives"]), tf.constant(x["positive_ids"]), temperature=2.0
    ).numpy()
    x_in = dict(x, negatives=x["negatives"][:0], negative_ids=x["negative_ids"][:0])
    np.testing.assert_allclose(only, reference_softmax(x_in, 2.0), rtol=1e-5)
    alphas = np.full((5, 2), 0.5, np.float32)
    hinge = pairwise_hinge_loss(
        tf.constant(x["query"]), tf.constant(x["positives"]), tf.constant(x["positive_ids"]),
        tf.constant(x["negatives"]), tf.constant(x["negative_ids"]), margin=1.0, hard_negatives=2, alphas=alphas,
    ).numpy()
    np.testing.assert_allclose(hinge, reference_softmax(x, n_hard=2, alphas=alphas, hinge_margin=1.0), rtol=1e-5)


def test_gradients_are_finite_with_masked_entries():
    x = batch()
    q = tf.Variable(x["query"])
    with tf.GradientTape() as tape:
        # 12 hard negatives > the 6-7 usable per query: some selections are invalid.
        loss = tf.reduce_mean(
            sampled_softmax_loss(
                q, tf.constant(x["positives"]), tf.constant(x["positive_ids"]), tf.constant(x["negatives"]),
                tf.constant(x["negative_ids"]), temperature=2.0, hard_negatives=12,
            )
        )
    grad = tape.gradient(loss, q).numpy()
    assert np.isfinite(loss.numpy()) and np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_hard_negative_layer_picks_top_n_and_mixes_on_the_segment():
    rng = np.random.default_rng(3)
    b, p, d, n = 4, 9, 6, 3
    query = rng.normal(size=(b, d)).astype(np.float32)
    positives = rng.normal(size=(b, d)).astype(np.float32)
    candidates = rng.normal(size=(p, d)).astype(np.float32)
    usable = np.ones((b, p), bool)
    usable[np.arange(b), np.arange(b)] = False  # each query's own positive
    scores = query @ candidates.T
    # Accidental hits on the candidates these queries score highest: they must be skipped.
    hits = {r: int(np.argmax(np.where(usable[r], scores[r], -np.inf))) for r in (0, 2)}
    for r, j in hits.items():
        usable[r, j] = False
    out = HardNegativeMix(n, (0.4, 0.6))(query, positives, candidates, tf.constant(usable))
    for r in range(b):
        masked = np.where(usable[r], scores[r], -np.inf)
        np.testing.assert_array_equal(out["indices"].numpy()[r], np.argsort(-masked, kind="stable")[:n])
    assert out["valid"].numpy().all()
    assert all(j not in out["indices"].numpy()[r] for r, j in hits.items())
    alphas, mixed, hard = out["alphas"].numpy(), out["mixed"].numpy(), out["hard"].numpy()
    assert np.all((alphas >= 0.4) & (alphas <= 0.6))
    np.testing.assert_allclose(hard, candidates[out["indices"].numpy()], rtol=1e-6)
    # On the segment: mixed - hard = t (positive - hard) with t = alpha in [a, b].
    direction = positives[:, None, :] - hard
    t = np.sum((mixed - hard) * direction, -1) / np.sum(direction * direction, -1)
    np.testing.assert_allclose(t, alphas, rtol=1e-4)
    np.testing.assert_allclose(mixed, hard + t[..., None] * direction, atol=1e-5)
    # Its scores are the mixtures' scores.
    np.testing.assert_allclose(out["mix_scores"].numpy(), np.einsum("bd,bnd->bn", query, mixed), rtol=1e-4, atol=1e-5)


def test_hard_negative_mix_marks_rows_with_too_few_negatives():
    scores = tf.constant([[3.0, 2.0, 1.0], [1.0, 5.0, 4.0]])
    usable = tf.constant([[False, True, False], [True, False, True]])
    out = hard_negative_mix(scores, tf.constant([0.0, 0.0]), usable, 2, alphas=tf.fill([2, 2], 0.5))
    assert out["indices"].numpy()[0, 0] == 1 and out["valid"].numpy().tolist() == [[True, False], [True, True]]
    assert out["indices"].numpy()[1].tolist() == [2, 0]
    np.testing.assert_allclose(out["mix_scores"].numpy()[1], [2.0, 0.5])
