"""One search statement: the dense leg, the keyword leg, or both fused by reciprocal rank fusion.

Each leg is a set of CTEs ending in `<leg> (id, score, rank)`; `fused` puts
them together and the final SELECT fetches the chunks' fields, so a search is
one statement whatever the mode (plus, when the dense leg runs, the HNSW
settings set before it in the same transaction). Fusion is weighted RRF:

    fused(c) = dense_weight / (rrf_k + dense_rank(c)) + keyword_weight / (rrf_k + keyword_rank(c))

with a term left out when c is not among that leg's `candidate_depth` best.
RRF needs no score calibration between cosine similarity and BM25, whose
scales have nothing in common.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.common.validation import require_range
from services.retriever.filters import Filter, compile_filter
from services.retriever.keyword import KEYWORD_FILTER_JOIN_SQL, KEYWORD_LEG_SQL, Bm25
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
DENSE_SEARCH_SETTINGS_SQL = """
SELECT set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)
"""

# ORDER BY must be the distance alone for the HNSW index to serve it.
_DENSE_LEG_SQL = """
dense_hits AS MATERIALIZED (
    SELECT c.id, c.embedding <=> {embedding}::vector AS distance
    FROM rag_chunks c
    WHERE {where}
    ORDER BY distance
    LIMIT {depth}
),
dense AS (
    SELECT id, 1 - distance AS score, row_number() OVER (ORDER BY distance, id) AS rank FROM dense_hits
)"""

# One leg alone: its ranks are the order. The other leg's columns stay NULL.
_SINGLE_LEG_SQL = """
fused AS (
    SELECT id, score, rank AS position,
           {dense_rank}::bigint AS dense_rank, {dense_score}::float8 AS dense_score,
           {keyword_rank}::bigint AS keyword_rank, {keyword_score}::float8 AS keyword_score
    FROM {leg}
)"""

# Ties (a chunk first in one leg only against another first only in the
# other, at equal weights) go to the older chunk: arbitrary but stable.
_FUSED_SQL = """
fused_scores AS (
    SELECT coalesce(d.id, k.id) AS id,
           coalesce({dense_weight}::float8 / ({rrf_k}::float8 + d.rank), 0)
               + coalesce({keyword_weight}::float8 / ({rrf_k}::float8 + k.rank), 0) AS score,
           d.rank AS dense_rank, d.score AS dense_score, k.rank AS keyword_rank, k.score AS keyword_score
    FROM dense d FULL JOIN keyword k ON k.id = d.id
),
fused AS (
    SELECT *, row_number() OVER (ORDER BY score DESC, id) AS position FROM fused_scores
)"""

_HITS_SQL = """
SELECT c.document_id, c.chunk_index, c.text, c.pages, c.metadata, d.title,
       f.score, f.dense_rank, f.dense_score, f.keyword_rank, f.keyword_score
FROM fused f
JOIN rag_chunks c ON c.id = f.id
JOIN rag_documents d ON d.namespace = c.namespace AND d.document_id = c.document_id
WHERE f.position <= {top_k}
ORDER BY f.position
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


def search_sql(query: SearchQuery, text_search_config: str, bm25: Bm25) -> tuple[str, list[object]]:
    """The statement for `query` and its parameters.

    Every value travels as a parameter; the SQL text holds only placeholders and
    fragments from our own code (compile_filter's output included).
    """
    params: list[object] = [query.namespace]

    def param(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    filter_sql = None if query.filter is None else compile_filter(query.filter, params, "c.metadata")
    # Alone, a leg needs only top_k rows; fused, each hands over candidate_depth.
    depth = query.top_k if query.mode is not SearchMode.HYBRID else query.fusion.candidate_depth
    legs = []
    if query.mode is not SearchMode.KEYWORD:
        where = "c.namespace = $1" + ("" if filter_sql is None else f" AND {filter_sql}")
        legs.append(_DENSE_LEG_SQL.format(embedding=param(query.embedding), where=where, depth=param(depth)))
    if query.mode is not SearchMode.DENSE:
        legs.append(
            KEYWORD_LEG_SQL.format(
                config=param(text_search_config),
                text=param(query.text),
                k1=f"{param(bm25.k1)}::float8",
                b=f"{param(bm25.b)}::float8",
                filter_join="" if filter_sql is None else KEYWORD_FILTER_JOIN_SQL.format(filter=filter_sql),
                depth=param(depth),
            )
        )
    if query.mode is SearchMode.HYBRID:
        fused = _FUSED_SQL.format(
            dense_weight=param(query.fusion.dense_weight),
            keyword_weight=param(query.fusion.keyword_weight),
            rrf_k=param(query.fusion.rrf_k),
        )
    elif query.mode is SearchMode.DENSE:
        fused = _SINGLE_LEG_SQL.format(
            leg="dense", dense_rank="rank", dense_score="score", keyword_rank="NULL", keyword_score="NULL"
        )
    else:
        fused = _SINGLE_LEG_SQL.format(
            leg="keyword", dense_rank="NULL", dense_score="NULL", keyword_rank="rank", keyword_score="score"
        )
    return "WITH" + ",".join([*legs, fused]) + _HITS_SQL.format(top_k=param(query.top_k)), params
