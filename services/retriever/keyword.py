"""The keyword leg: BM25 over an inverted index kept in PostgreSQL.

PostgreSQL's own text search does the language work: `to_tsvector(config,
title || ' ' || text)` splits, drops stop words and stems, and each lexeme's
positions give its term frequency. What ts_rank lacks is corpus statistics, so
the query is scored as Okapi BM25:

    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(c, q) = sum over t in q of idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(c) / avglen))

with N, df and avglen taken over the chunks of the namespace searched, so one
namespace's documents never change another's ranking. df is counted from the
index's block headers when the query runs; N and the total length live in
`rag_keyword_stats`, moved by the same transaction that adds or removes chunks.

The index is postings in blocks (keyword_index.py), searched by a threshold
algorithm that stops reading as soon as the unread blocks cannot change the
top results (keyword_search.py). EXHAUSTIVE_KEYWORD_SQL below scores every
posting of every query lexeme: the reference the search must equal, kept for
the tests and the benchmarks.

The title is indexed with every chunk of its document: a chunk of a long
document otherwise loses the words that say what the document is about. On
SciFact train (bench/keyword_leg.py --sweep) that lifts nDCG@10 from 0.672 to
0.694, where ts_rank over the same lexemes gives 0.614 and bm25s over whole
documents 0.696. k1 and b barely matter there (0.688..0.694 over k1 0.9..1.5,
b 0.5..0.9), so the textbook 1.2 and 0.75 stay. pgvector sparsevec weights
were no alternative: they would bake N and the average length into every
stored vector, stale after the next write.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from services.retriever.filters import Filter, compile_filter
from services.retriever.limits import DEFAULT_BM25_B, DEFAULT_BM25_K1, MAX_BM25_B, MAX_BM25_K1


@dataclass(frozen=True, slots=True)
class Bm25:
    """BM25's term-frequency saturation (k1) and length normalisation (b)."""

    k1: float = DEFAULT_BM25_K1
    b: float = DEFAULT_BM25_B

    def __post_init__(self) -> None:
        # Configuration, not caller input: ValueError. NaN fails both comparisons.
        if not 0 <= self.k1 <= MAX_BM25_K1:
            raise ValueError(f"BM25 k1 must be 0..{MAX_BM25_K1:g}, got {self.k1}")
        if not 0 <= self.b <= MAX_BM25_B:
            raise ValueError(f"BM25 b must be 0..{MAX_BM25_B:g}, got {self.b}")


# Every posting of every query lexeme, scored: the best `depth` chunks by BM25
# as (id, score), best first, ties by chunk id. $1 is the namespace; the other
# placeholders are filled in by search_exhaustively. Postings come from the
# blocks, the fresh chunks not compacted yet, and rag_postings, where a database
# written before blocks keeps them until they are converted.
_EXHAUSTIVE_KEYWORD_SQL = """
WITH query_terms AS (
    SELECT t.lexeme FROM unnest(to_tsvector({config}::regconfig, {text})) AS t
),
keyword_postings AS MATERIALIZED (
    SELECT u.chunk_id, b.lexeme, u.tf, u.length AS chunk_length
    FROM rag_keyword_blocks b
    CROSS JOIN unnest(b.chunk_ids, b.tfs, b.lengths) AS u (chunk_id, tf, length)
    WHERE b.namespace = $1 AND b.lexeme IN (SELECT lexeme FROM query_terms)
    UNION ALL
    SELECT f.chunk_id, t.lexeme, cardinality(t.positions), f.length
    FROM rag_keyword_fresh f CROSS JOIN unnest(f.lexemes) AS t
    WHERE f.namespace = $1 AND t.lexeme IN (SELECT lexeme FROM query_terms)
    UNION ALL
    SELECT p.chunk_id, p.lexeme, p.tf, p.chunk_length
    FROM rag_postings p
    WHERE p.namespace = $1 AND p.lexeme IN (SELECT lexeme FROM query_terms)
),
keyword_corpus AS (
    SELECT s.chunks::float8 AS n, s.total_length::float8 / nullif(s.chunks, 0) AS avg_length
    FROM rag_keyword_stats s
    WHERE s.namespace = $1
),
keyword_terms AS (
    SELECT p.lexeme, ln(1 + (k.n - count(*) + 0.5) / (count(*) + 0.5)) AS idf
    FROM keyword_postings p CROSS JOIN keyword_corpus k
    GROUP BY p.lexeme, k.n
),
keyword_scores AS (
    SELECT p.chunk_id AS id,
           sum(t.idf * p.tf * ({k1} + 1) / (p.tf + {k1} * (1 - {b} + {b} * p.chunk_length / k.avg_length)))
               AS score
    FROM keyword_postings p
    JOIN keyword_terms t ON t.lexeme = p.lexeme
    CROSS JOIN keyword_corpus k
    GROUP BY p.chunk_id
)
SELECT s.id, s.score
FROM keyword_scores s
{filter_join}
ORDER BY s.score DESC, s.id
LIMIT {depth}
"""


async def search_exhaustively(
    conn: asyncpg.Connection,
    namespace: str,
    text: str,
    depth: int,
    *,
    text_search_config: str,
    bm25: Bm25,
    filter: Filter | None = None,
) -> list[tuple[int, float]]:
    """The best `depth` (chunk id, score) pairs, by scoring every posting of the query's lexemes."""
    params: list[object] = [namespace]
    join = ""
    if filter is not None:
        condition = compile_filter(filter, params, "c.metadata")
        join = f"JOIN rag_chunks c ON c.namespace = $1 AND c.id = s.id WHERE {condition}"

    def param(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    sql = _EXHAUSTIVE_KEYWORD_SQL.format(
        config=param(text_search_config),
        text=param(text),
        k1=f"{param(bm25.k1)}::float8",
        b=f"{param(bm25.b)}::float8",
        filter_join=join,
        depth=param(depth),
    )
    return [(row["id"], row["score"]) for row in await conn.fetch(sql, *params)]
