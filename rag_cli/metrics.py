"""Retrieval metrics over one ranked list, as trec_eval and BEIR define them.

`ranked_ids` is a run's document ids, best first, each at most once. `gains` is
one query's judgments: document id -> graded relevance (the qrels score). A
document is relevant when its gain is above 0; unjudged documents gain nothing.
A query with nothing relevant scores 0 on every metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def _check(ranked_ids: Sequence[str], k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(set(ranked_ids)) != len(ranked_ids):
        raise ValueError("ranked_ids must not repeat a document id")


def _dcg(gains_in_order: Sequence[float]) -> float:
    """Linear gain with the log2 discount: rank r counts gain / log2(r + 1)."""
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains_in_order, start=1))


def ndcg_at_k(ranked_ids: Sequence[str], gains: Mapping[str, float], k: int) -> float:
    """DCG of the top k over the DCG of the best possible top k from the judgments."""
    _check(ranked_ids, k)
    positive = sorted((g for g in gains.values() if g > 0), reverse=True)
    ideal = _dcg(positive[:k])
    if ideal == 0:
        return 0.0
    return _dcg([max(gains.get(doc, 0.0), 0.0) for doc in ranked_ids[:k]]) / ideal


def recall_at_k(ranked_ids: Sequence[str], gains: Mapping[str, float], k: int) -> float:
    """Share of the relevant documents that are in the top k."""
    _check(ranked_ids, k)
    relevant = {doc for doc, gain in gains.items() if gain > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked_ids[:k])) / len(relevant)


def mrr_at_k(ranked_ids: Sequence[str], gains: Mapping[str, float], k: int) -> float:
    """1 / rank of the first relevant document in the top k, else 0."""
    _check(ranked_ids, k)
    for rank, doc in enumerate(ranked_ids[:k], start=1):
        if gains.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), interpolating linearly between the closest ranks.

    The same as numpy's default method: position (n - 1) * p / 100 in the sorted values.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"p must be 0..100, got {p}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * p / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
