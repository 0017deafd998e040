"""Relevance control after ANN (the paper's filter before pre-rank).

    control = RelevanceControl.load("exports/3/vocab/intents.json")
    kept = control.apply("阿迪达斯 跑步鞋", ids, scores, {"brand": ..., "leaf_cat": ..., "top_cat": ...})
    kept.ids, kept.scores, kept.removed, kept.intent

Query understanding (`features.intent`, the same matcher evaluation uses) finds the
brand and category intents a query names; retrieved items whose structured fields
contradict them are removed. A query with no intent passes everything. Field arrays are
aligned with `ids` (as the index returns them); the check is vectorised, so filtering the
paper's 9,600 candidates costs well under a millisecond.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.intent import IntentMatcher, QueryIntent

@dataclass
class Filtered:
    ids: np.ndarray
    scores: np.ndarray
    removed: int
    intent: QueryIntent
    keep: np.ndarray  # bool [n]: which of the input rows survived


class RelevanceControl:
    def __init__(self, matcher: IntentMatcher):
        self.matcher = matcher

    @classmethod
    def load(cls, intents_json: str) -> "RelevanceControl":
        return cls(IntentMatcher.load(intents_json))

    def mask(self, intent: QueryIntent, fields: dict) -> np.ndarray:
        """bool [n]: the rows whose brand / leaf_cat / top_cat agree with `intent`."""
        return intent.mask(fields["brand"], fields["leaf_cat"], fields["top_cat"])

    def apply(self, query: str, ids, scores, fields: dict) -> Filtered:
        intent = self.matcher.match(query)
        ids, scores = np.asarray(ids), np.asarray(scores)
        if intent.empty:
            return Filtered(ids, scores, 0, intent, np.ones(len(ids), dtype=bool))
        keep = self.mask(intent, fields)
        return Filtered(ids[keep], scores[keep], int((~keep).sum()), intent, keep)
