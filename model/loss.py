"""The retrieval losses: our sampled softmax (in-batch positives + random catalog items,
accidental hits removed, log-Q correction, temperature, I_mix hard negatives) and the
pairwise hinge the paper compares it with.

Notation, per training batch: b queries with embeddings q [b, d] and their positives
i+ [b, d]; n random catalog items [n, d]. The candidates of every query are the P = b + n
items (all positives of the batch, then the random items); for query r, candidate r is
its positive and every other candidate is a sampled negative, except an *accidental hit*
(a candidate with the positive's item id: the same item clicked in another search of the
batch, or drawn at random), which is masked out.

Log-Q correction. Sampled softmax estimates the full softmax over the catalog if each
candidate's logit is lowered by log Q(i), Q(i) = the expected number of times i is in the
sample. The sample is the union of two samplers: the batch's positives, drawn by
popularity (an item that is the positive of a share p_i of training examples appears
b * p_i times in a batch of b), and n uniform draws from a catalog of N (n / N times).
Whichever sampler produced a candidate, its expected count is the sum,

    Q(i) = b * p_i + n / N,

so every candidate, in-batch or random, gets log Q(i) of its own popularity
(`item_log_q` = log p_i of the positives and `neg_item_log_q` of the random items come
with the data). Without correction popular items are over-penalised as negatives.

I_mix under log-Q. A mixture alpha * i+ + (1 - alpha) * I_hard is built from the
positive and a sampled negative, so its logit is the same mixture of their corrected
logits: alpha * logit(i+) + (1 - alpha) * logit(I_hard). Its weight against the positive
then depends only on how close the hard negative is, never on the positive's popularity,
and a constant added to every log Q leaves the loss unchanged.
"""
from __future__ import annotations

import math

import features  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from model.layers import hard_negative_mix

NEG_INF = float("-inf")
NEGATIVE_LOG_Q = "neg_item_log_q"


def candidate_scores(query, positives, positive_ids, negatives=None, negative_ids=None) -> dict:
    """Scores of every query against every candidate, and which candidates are usable.

    query [b, d], positives [b, d], positive_ids [b] (any dtype comparable with ==),
    negatives [n, d] and negative_ids [n] or None. Returns
      scores [b, P] = <q_r, candidate_j>, P = b + n,
      positive_scores [b] = <q_r, i+_r>,
      is_positive [b, P] (candidate j == r),
      usable [b, P] (a sampled negative: not the positive, not an accidental hit)."""
    candidates, ids = positives, positive_ids
    if negatives is not None:
        candidates = tf.concat([positives, negatives], axis=0)
        ids = tf.concat([positive_ids, tf.cast(negative_ids, positive_ids.dtype)], axis=0)
    scores = tf.matmul(query, candidates, transpose_b=True)
    b, p = tf.shape(query)[0], tf.shape(candidates)[0]
    is_positive = tf.cast(tf.eye(b, p), tf.bool)
    hit = tf.equal(positive_ids[:, None], ids[None, :])
    usable = tf.logical_not(tf.logical_or(hit, is_positive))
    positive_scores = tf.reduce_sum(query * positives, axis=-1)
    return {"scores": scores, "positive_scores": positive_scores, "is_positive": is_positive, "usable": usable}


def sampling_log_q(item_log_q, negative_log_q=None, catalog_size: int = 1) -> tf.Tensor:
    """log Q of the candidates [b + n] under the union of the two samplers:
    log(b * p_i + n / N) for every candidate i, with log p_i = item_log_q [b] for the
    batch's positives and negative_log_q [n] (or None: no random items) for the random
    catalog items; N = catalog_size."""
    item_log_q = tf.convert_to_tensor(item_log_q, tf.float32)
    log_p = item_log_q
    n = tf.constant(0.0)
    if negative_log_q is not None:
        negative_log_q = tf.convert_to_tensor(negative_log_q, tf.float32)
        log_p = tf.concat([item_log_q, negative_log_q], axis=0)
        n = tf.cast(tf.shape(negative_log_q)[0], tf.float32)
    b = tf.cast(tf.shape(item_log_q)[0], tf.float32)
    in_batch = tf.math.log(b) + log_p
    if negative_log_q is None:
        return in_batch
    uniform = tf.math.log(n) - math.log(catalog_size)
    return tf.experimental.numpy.logaddexp(in_batch, uniform)


def sampled_softmax_loss(
    query,
    positives,
    positive_ids,
    negatives=None,
    negative_ids=None,
    *,
    temperature: float = 1.0,
    candidate_log_q=None,
    hard_negatives: int = 0,
    mix_range: tuple[float, float] = (0.4, 0.6),
    alphas=None,
):
    """Per-query softmax cross-entropy of the positive against the sampled candidates.

    Shapes as in `candidate_scores`; candidate_log_q [P] or None (no correction);
    `hard_negatives` N > 0 appends N I_mix logits per query (the N usable candidates the
    query scores highest, see `hard_negative_mix`; `alphas` [b, min(N, P)] fixes the
    draws). Returns loss [b]:
      logit_j = <q, c_j> / tau - log Q(c_j), masked to -inf for accidental hits,
      logit_mix = alpha * logit_positive + (1 - alpha) * logit_hard,
      loss = logsumexp(positive, sampled negatives, mixes) - positive logit."""
    c = candidate_scores(query, positives, positive_ids, negatives, negative_ids)
    logits = c["scores"] / temperature
    if candidate_log_q is not None:
        logits -= tf.cast(candidate_log_q, logits.dtype)[None, :]
    keep = tf.logical_or(c["usable"], c["is_positive"])
    logits = tf.where(keep, logits, tf.fill(tf.shape(logits), NEG_INF))
    positive_logit = tf.reduce_sum(tf.where(c["is_positive"], logits, tf.zeros_like(logits)), axis=1)
    parts = [logits]
    if hard_negatives > 0:
        # Hardness is similarity to the query (raw scores); the mixture's logit mixes the
        # corrected logits, so it sits between the positive and the hard negative.
        safe = tf.where(keep, logits, tf.zeros_like(logits))
        mix = hard_negative_mix(safe, positive_logit, c["usable"], hard_negatives, mix_range, alphas,
                                select_by=c["scores"])
        parts.append(tf.where(mix["valid"], mix["mix_scores"], tf.fill(tf.shape(mix["mix_scores"]), NEG_INF)))
    return tf.reduce_logsumexp(tf.concat(parts, axis=1), axis=1) - positive_logit


def pairwise_hinge_loss(
    query,
    positives,
    positive_ids,
    negatives=None,
    negative_ids=None,
    *,
    margin: float = 1.0,
    hard_negatives: int = 0,
    mix_range: tuple[float, float] = (0.4, 0.6),
    alphas=None,
):
    """Per-query mean of max(0, margin - <q, i+> + <q, i->) over the usable sampled
    negatives (and the I_mix mixtures when `hard_negatives` > 0): each negative is only
    compared with the positive, locally, which is what the paper contrasts with softmax.
    Returns loss [b]."""
    c = candidate_scores(query, positives, positive_ids, negatives, negative_ids)
    pos = c["positive_scores"][:, None]
    terms = [tf.nn.relu(margin - pos + c["scores"])]
    masks = [c["usable"]]
    if hard_negatives > 0:
        mix = hard_negative_mix(c["scores"], c["positive_scores"], c["usable"], hard_negatives, mix_range, alphas)
        terms.append(tf.nn.relu(margin - pos + mix["mix_scores"]))
        masks.append(mix["valid"])
    term = tf.concat(terms, axis=1)
    mask = tf.cast(tf.concat(masks, axis=1), term.dtype)
    return tf.reduce_sum(term * mask, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


class RetrievalLoss:
    """The configured loss: `RetrievalLoss(config, catalog_size)(query, positives,
    positive_ids, negatives, negative_ids, item_log_q)` -> scalar mean over the batch.

    Log-Q correction is applied when `config.log_q_correction` and `item_log_q` is given
    (then random items need `negative_log_q`: both candidate groups are corrected
    together, or neither, so their logits stay on one scale). With `config.score_scale`
    s > 0 the towers' unit vectors score s * cos(q, i)."""

    def __init__(self, config, catalog_size: int):
        if config.log_q_correction and catalog_size <= 0:
            raise ValueError(f"log-Q correction needs the catalog size, got {catalog_size}")
        self.config = config
        self.catalog_size = catalog_size

    def per_example(self, query, positives, positive_ids, negatives=None, negative_ids=None, item_log_q=None,
                    alphas=None, negative_log_q=None):
        cfg = self.config
        n_hard = cfg.hard_negatives if cfg.use_mix else 0
        mix_range = (cfg.mix_a, cfg.mix_b)
        if cfg.loss == "hinge":
            return pairwise_hinge_loss(
                query,
                positives,
                positive_ids,
                negatives,
                negative_ids,
                margin=cfg.hinge_margin,
                hard_negatives=n_hard,
                mix_range=mix_range,
                alphas=alphas,
            )
        if cfg.score_scale > 0:  # towers are L2-normalised: softmax scores are score_scale * cosine
            query = query * cfg.score_scale
        log_q = None
        if cfg.log_q_correction and item_log_q is not None:
            if negatives is not None and negative_log_q is None:
                raise ValueError(f"log-Q correction needs the random items' log q ({NEGATIVE_LOG_Q}) with them")
            log_q = sampling_log_q(item_log_q, negative_log_q if negatives is not None else None, self.catalog_size)
        return sampled_softmax_loss(
            query,
            positives,
            positive_ids,
            negatives,
            negative_ids,
            temperature=cfg.temperature,
            candidate_log_q=log_q,
            hard_negatives=n_hard,
            mix_range=mix_range,
            alphas=alphas,
        )

    def __call__(self, *args, **kwargs):
        return tf.reduce_mean(self.per_example(*args, **kwargs))
