"""A search's legs and their fusion: dense (HNSW), keyword (BM25), or both by reciprocal rank fusion.

Each leg ranks up to `depth` chunks by itself; fusion puts the two rankings
together, and the hits' fields are fetched for the top_k that survive. All of
it runs in one REPEATABLE READ transaction (store/reads.py), one snapshot, so
the legs and the fields agree however writes interleave. Fusion is weighted RRF:

    fused(c) = dense_weight / (rrf_k + dense_rank(c)) + keyword_weight / (rrf_k + keyword_rank(c))

with a term left out when c is not among that leg's `candidate_depth` best.
RRF needs no score calibration between cosine similarity and BM25, whose
scales have nothing in common.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.common.validation import require_range
from services.retriever.filters import Filter, compile_filter
from services.retriever.limits import (
    DEFAULT_CANDIDATE_DEPTH,
    DEFAULT_LEG_WEIGHT,
    DEFAULT_RRF_K,
    MAX_CANDIDATE_DEPTH,
    MAX_LEG_WEIGHT,
    MAX_RRF_K,
)


class SearchMode(enum.Enum):
    DENSE = "dense"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


@dataclass(frozen=True, slots=True)
class Fusion:
    """Reciprocal rank fusion settings; the defaults and why are in limits.py."""

    rrf_k: float = DEFAULT_RRF_K
    dense_weight: float = DEFAULT_LEG_WEIGHT
    keyword_weight: float = DEFAULT_LEG_WEIGHT
    # Candidates each leg hands to fusion, so a hybrid search returns at most
    # twice this many hits (fewer than top_k if the depth is below it).
    candidate_depth: int = DEFAULT_CANDIDATE_DEPTH


def require_fusion(fusion: Fusion, field: str = "fusion") -> Fusion:
    if not (math.isfinite(fusion.rrf_k) and 0 < fusion.rrf_k <= MAX_RRF_K):
        raise InvalidArgument(
            f"{field}.rrf_k must be a number > 0 and at most {MAX_RRF_K:g}, got {fusion.rrf_k}",
            field=f"{field}.rrf_k",
        )
    for name, weight in (("dense_weight", fusion.dense_weight), ("keyword_weight", fusion.keyword_weight)):
        if not (math.isfinite(weight) and 0 <= weight <= MAX_LEG_WEIGHT):
            raise InvalidArgument(
                f"{field}.{name} must be a number 0..{MAX_LEG_WEIGHT:g}, got {weight}",
                field=f"{field}.{name}",
            )
    require_a_weighted_leg(fusion.dense_weight, fusion.keyword_weight, f"{field}.")
    require_range(fusion.candidate_depth, f"{field}.candidate_depth", 1, MAX_CANDIDATE_DEPTH)
    return fusion


def require_a_weighted_leg(dense_weight: float, keyword_weight: float, prefix: str) -> None:
    """At least one leg must count, or every fused score is 0 and the order means nothing.

    `prefix` names where the weights came from: "fusion." for a request,
    "default_" for the settings.
    """
    if dense_weight == 0 and keyword_weight == 0:
        raise InvalidArgument(
            f"{prefix}dense_weight and {prefix}keyword_weight must not both be 0; "
            "use a single-leg mode to rank by one leg alone",
            field=f"{prefix}dense_weight",
        )


# relaxed_order lets a filtered HNSW scan keep going until it has LIMIT rows
# that pass the filter (or has visited hnsw.max_scan_tuples, 20,000 by
# default), instead of stopping after ef_search candidates. The rows may come
# slightly out of order, so the ranks are taken from a sort of the rows found.
# Every pooled connection starts with these settings for the store's default
# ef_search (dense_search_settings); a search that asks for another ef_search
# sets it for its own transaction.
DENSE_SEARCH_SETTINGS_SQL = """
SELECT set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)
"""


def dense_search_settings(ef_search: int) -> dict[str, str]:
    """The dense leg's settings as session settings, for a connection whose searches use `ef_search`."""
    return {"hnsw.ef_search": str(ef_search), "hnsw.iterative_scan": "relaxed_order"}


# ORDER BY must be the distance alone for the HNSW index to serve it.
_DENSE_LEG_SQL = """
SELECT c.id, c.embedding <=> $2::vector AS distance
FROM rag_chunks c
WHERE c.namespace = $1{filter}
ORDER BY distance
LIMIT $3
"""

HITS_SQL = """
SELECT c.id, c.document_id, c.chunk_index, c.text, c.pages, c.metadata, d.title
FROM rag_chunks c
JOIN rag_documents d ON d.namespace = c.namespace AND d.document_id = c.document_id
WHERE c.namespace = $1 AND c.id = ANY ($2::bigint[])
"""


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A validated search, ready to become SQL."""

    namespace: str
    mode: SearchMode
    top_k: int
    # The query vector (dense, hybrid) and text (keyword, hybrid); None where the mode needs none.
    embedding: object | None
    text: str | None
    filter: Filter | None
    fusion: Fusion
    # hnsw.ef_search for the dense leg.
    ef_search: int

    @property
    def depth(self) -> int:
        """How many chunks each leg ranks: top_k alone, candidate_depth when fused."""
        return self.top_k if self.mode is not SearchMode.HYBRID else self.fusion.candidate_depth


@dataclass(frozen=True, slots=True)
class Ranked:
    """One chunk of the final order, with its place and score in each leg that found it."""

    chunk_id: int
    score: float
    dense: tuple[int, float] | None
    keyword: tuple[int, float] | None


def dense_leg_sql(query: SearchQuery) -> tuple[str, list[object]]:
    """The dense leg's statement and parameters: (id, cosine distance) of the nearest chunks."""
    params: list[object] = [query.namespace, query.embedding, query.depth]
    filter_sql = "" if query.filter is None else " AND " + compile_filter(query.filter, params, "c.metadata")
    return _DENSE_LEG_SQL.format(filter=filter_sql), params


def dense_hits_sql(query: SearchQuery) -> tuple[str, list[object]]:
    """A dense search in one statement: the namespace's index version, and the dense leg's
    chunks with their fields (one row with only the version when none is found).

    One statement reads one snapshot, so a dense search needs no transaction
    of its own, and takes one round trip to the database instead of five.
    """
    leg, params = dense_leg_sql(query)
    return (
        f"""
WITH nearest AS MATERIALIZED ({leg})
SELECT v.version, h.*
FROM (SELECT (SELECT version FROM rag_keyword_stats WHERE namespace = $1) AS version) v
LEFT JOIN (
    SELECT n.id, n.distance, c.document_id, c.chunk_index, c.text, c.pages, c.metadata, d.title
    FROM nearest n
    JOIN rag_chunks c ON c.namespace = $1 AND c.id = n.id
    JOIN rag_documents d ON d.namespace = c.namespace AND d.document_id = c.document_id
) h ON true
""",
        params,
    )


def dense_ranking(rows: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """(chunk id, similarity) best first, by distance then id: the scan may return rows out of order."""
    return [(chunk_id, 1 - distance) for chunk_id, distance in sorted(rows, key=lambda r: (r[1], r[0]))]


def fuse(
    query: SearchQuery,
    dense: Sequence[tuple[int, float]],
    keyword: Sequence[tuple[int, float]],
) -> list[Ranked]:
    """The top_k chunks: one leg's order alone, or both fused by weighted RRF (ties to the older chunk)."""
    dense_at = {chunk_id: (rank, score) for rank, (chunk_id, score) in enumerate(dense, start=1)}
    keyword_at = {chunk_id: (rank, score) for rank, (chunk_id, score) in enumerate(keyword, start=1)}
    if query.mode is SearchMode.DENSE:
        ranked = [Ranked(c, s, dense_at[c], None) for c, s in dense]
    elif query.mode is SearchMode.KEYWORD:
        ranked = [Ranked(c, s, None, keyword_at[c]) for c, s in keyword]
    else:
        fusion = query.fusion
        ranked = []
        for chunk_id in dense_at.keys() | keyword_at.keys():
            in_dense, in_keyword = dense_at.get(chunk_id), keyword_at.get(chunk_id)
            score = 0.0
            if in_dense is not None:
                score += fusion.dense_weight / (fusion.rrf_k + in_dense[0])
            if in_keyword is not None:
                score += fusion.keyword_weight / (fusion.rrf_k + in_keyword[0])
            ranked.append(Ranked(chunk_id, score, in_dense, in_keyword))
        ranked.sort(key=lambda r: (-r.score, r.chunk_id))
    return ranked[: query.top_k]
