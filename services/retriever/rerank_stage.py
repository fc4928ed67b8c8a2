"""The optional rerank step of a search: which candidates, what budget, what order."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rag.common.v1 import common_pb2
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.validation import require_range
from services.retriever.limits import (
    DEFAULT_RERANK_FUSION,
    DEFAULT_RERANK_FUSION_K,
    DEFAULT_RERANK_FUSION_WEIGHT,
    MAX_RERANK_BUDGET_MS,
    MAX_RERANK_CANDIDATES,
    RERANK_FUSIONS,
    RerankFusionMode,
)
from services.retriever.rerank import Reranker, rerank_order
from services.retriever.rerank_text import passage_text
from services.retriever.store.records import Hit


@dataclass(frozen=True)
class RerankFusion:
    mode: RerankFusionMode = DEFAULT_RERANK_FUSION
    weight: float = DEFAULT_RERANK_FUSION_WEIGHT
    k: float = DEFAULT_RERANK_FUSION_K

    def order(self, scores: Sequence[float]) -> list[tuple[int, float]]:
        """(candidate index, final score), best first, for candidates in fused order with these logits.

        The final score is what the hits are ordered by: the logit itself with
        replace, the fused reciprocal rank score with rrf. Ties keep the fused order.
        """
        by_reranker = rerank_order(scores)
        if self.mode == "replace":
            return [(index, scores[index]) for index in by_reranker]
        reranker_rank = {index: rank for rank, index in enumerate(by_reranker, start=1)}
        # Candidates arrive in fused order: index 0 is fused rank 1.
        fused = [
            1 / (self.k + index + 1) + self.weight / (self.k + reranker_rank[index])
            for index in range(len(scores))
        ]
        # sorted() is stable, so equal scores leave the better-fused candidate first.
        return [
            (index, fused[index]) for index in sorted(range(len(scores)), key=lambda index: -fused[index])
        ]


# The cross-encoder's order alone.
REPLACE = RerankFusion("replace", 1.0)


def fusion_order(
    mode: str, *, weight: float = DEFAULT_RERANK_FUSION_WEIGHT, k: float = DEFAULT_RERANK_FUSION_K
) -> Callable[[Sequence[float]], list[int]]:
    """The order (indices) the stage gives candidates in fused order with these cross-encoder scores.

    For code that ranks as the retriever does without a Hit in hand (the reranker trainer's validation).
    """
    if mode not in RERANK_FUSIONS:
        raise ValueError(f"rerank fusion must be one of {', '.join(RERANK_FUSIONS)}; got {mode!r}")
    fusion = RerankFusion(mode, weight, k)

    def order(scores: Sequence[float]) -> list[int]:
        return [index for index, _ in fusion.order(scores)]

    return order


@dataclass(frozen=True)
class RerankPlan:
    """What one request asked of the reranker, after defaults."""

    candidates: int
    budget_s: float


@dataclass(frozen=True)
class Reranked:
    hits: list[Hit]
    reranked: bool
    timed_out: bool


def plan(
    params: common_pb2.RerankParams, *, configured: bool, default_candidates: int, default_budget_ms: int
) -> RerankPlan | None:
    """None when this request is not reranked; unset `enabled` follows the configuration."""
    enabled = params.enabled if params.HasField("enabled") else configured
    if not enabled:
        return None
    if not configured:
        raise FailedPrecondition(
            "rerank.enabled is true but this retriever has no reranker; set RETRIEVER_RERANK_MODEL",
            field="rerank.enabled",
        )
    candidates = params.candidates if params.HasField("candidates") else default_candidates
    budget_ms = params.budget_ms if params.HasField("budget_ms") else default_budget_ms
    require_range(candidates, "rerank.candidates", 1, MAX_RERANK_CANDIDATES)
    require_range(budget_ms, "rerank.budget_ms", 1, MAX_RERANK_BUDGET_MS)
    return RerankPlan(candidates=candidates, budget_s=budget_ms / 1000)


async def rerank(
    reranker: Reranker,
    query: str,
    candidates: Sequence[Hit],
    top_k: int,
    budget_s: float,
    fusion: RerankFusion = REPLACE,
    rest: Sequence[Hit] = (),
) -> Reranked:
    """The top_k hits: `candidates` in the order `fusion` makes of the cross-encoder's scores, then `rest`
    (the fused hits past the candidates, when a search asks for more than are reranked) as they were;
    or all in fused order, flagged as timed out, when the budget ran out first."""
    if not query.strip():
        raise InvalidArgument("reranking needs query_text", field="query_text")
    passages = [passage_text(hit.title, hit.text) for hit in candidates]
    outcome = await reranker.score(query, passages, budget_s=budget_s)
    if outcome.scores is None:
        return Reranked([*candidates, *rest][:top_k], reranked=False, timed_out=outcome.timed_out)
    hits = [
        dataclasses.replace(candidates[index], score=score, rerank_score=outcome.scores[index])
        for index, score in fusion.order(outcome.scores)
    ]
    return Reranked([*hits, *rest][:top_k], reranked=True, timed_out=False)
