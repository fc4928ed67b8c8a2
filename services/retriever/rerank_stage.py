"""The optional rerank step of a search: which candidates, what budget, what order."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from rag.common.v1 import common_pb2
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.validation import require_range
from services.retriever.limits import MAX_RERANK_BUDGET_MS, MAX_RERANK_CANDIDATES
from services.retriever.rerank import Reranker, rerank_order
from services.retriever.store.records import Hit


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
    reranker: Reranker, query: str, candidates: Sequence[Hit], top_k: int, budget_s: float
) -> Reranked:
    """The top_k candidates in the cross-encoder's order, or the fused order flagged
    as timed out when the budget ran out first."""
    if not query.strip():
        raise InvalidArgument("reranking needs query_text", field="query_text")
    outcome = await reranker.score(query, [hit.text for hit in candidates], budget_s=budget_s)
    if outcome.scores is None:
        return Reranked(list(candidates[:top_k]), reranked=False, timed_out=outcome.timed_out)
    order = rerank_order(outcome.scores)[:top_k]
    hits = [
        dataclasses.replace(candidates[i], score=outcome.scores[i], rerank_score=outcome.scores[i])
        for i in order
    ]
    return Reranked(hits, reranked=True, timed_out=False)
