"""How a reranker does on the held-back queries: nDCG@10 of the fused order against the reranked one.

Measured as `rag eval` measures a search (rag_cli/eval.py): the chunks become a
document ranking, a document ranking where its best chunk does, scored with
nDCG@10 against the judgments and averaged over the queries. The reranker
reorders the first `top_n` candidates, as the retriever's rerank stage does,
and the rest keep their fused order behind them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from rag_cli import metrics
from rag_cli.reranker.judgments import Candidate, JudgedQuery

NDCG_AT = 10
# Scores a batch of (query, passage) pairs, higher is more relevant.
Scorer = Callable[[Sequence[tuple[str, str]]], Sequence[float]]
# Given the candidates' reranker scores in fused order, the order (indices) the stage returns.
Orderer = Callable[[Sequence[float]], list[int]]


@dataclass(frozen=True)
class Validation:
    queries: int
    fused_ndcg: float
    reranked_ndcg: float

    @property
    def gain(self) -> float:
        return self.reranked_ndcg - self.fused_ndcg


def document_ranking(candidates: Sequence[Candidate]) -> list[str]:
    return list(dict.fromkeys(candidate.document_id for candidate in candidates))


def ndcg(query: JudgedQuery, candidates: Sequence[Candidate]) -> float:
    gains = {document: float(gain) for document, gain in query.gains.items()}
    return metrics.ndcg_at_k(document_ranking(candidates), gains, NDCG_AT)


def reordered(
    candidates: Sequence[Candidate], scores: Sequence[float], top_n: int, order: Orderer
) -> list[Candidate]:
    """The first top_n candidates in the reranked order, then the rest as they were."""
    head = list(candidates[:top_n])
    return [head[index] for index in order(scores)] + list(candidates[top_n:])


def validate(
    queries: Sequence[JudgedQuery],
    candidates: Mapping[str, Sequence[Candidate]],
    scores: Mapping[str, Sequence[float]],
    top_n: int,
    order: Orderer,
) -> Validation:
    """nDCG@10 before and after reranking, over the queries; `scores` holds each query's first top_n."""
    fused = [ndcg(query, candidates[query.id]) for query in queries]
    reranked = [
        ndcg(query, reordered(candidates[query.id], scores[query.id], top_n, order)) for query in queries
    ]
    return Validation(len(queries), statistics.fmean(fused), statistics.fmean(reranked))


def score_candidates(
    queries: Sequence[JudgedQuery],
    candidates: Mapping[str, Sequence[Candidate]],
    top_n: int,
    scorer: Scorer,
    on_scored: Callable[[], object] = lambda: None,
) -> dict[str, list[float]]:
    """Query id -> the reranker's scores of its first top_n candidates, one query's pairs per batch."""
    scores: dict[str, list[float]] = {}
    for query in queries:
        pairs = [(query.text, candidate.passage) for candidate in candidates[query.id][:top_n]]
        scores[query.id] = [float(score) for score in scorer(pairs)] if pairs else []
        on_scored()
    return scores
