"""The keyword leg: BM25 over an inverted index kept in PostgreSQL.

PostgreSQL's own text search does the language work: `to_tsvector(config,
title || ' ' || text)` splits, drops stop words and stems, and each lexeme's
positions give its term frequency. What ts_rank lacks is corpus statistics, so
the chunks' lexemes go into `rag_postings` (one row per chunk and lexeme, with
the chunk's length) and the query is scored as Okapi BM25 in SQL:

    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(c, q) = sum over t in q of idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(c) / avglen))

with N, df and avglen taken over the chunks of the namespace searched, so one
namespace's documents never change another's ranking. df is counted from the
postings the query reads anyway; N and the total length live in
`rag_keyword_stats`, moved by the same transaction that adds or removes chunks
(reading them there takes 0.1 ms; summing them from rag_documents at query
time took 0.9 ms for SciFact's 5,183 documents, and grows with the namespace).

A postings table, rather than the alternatives: with tf and the chunk length
in the primary key's index, a query reads one index range per lexeme and no
heap page, so df, tf and lengths come exactly and cheaply (7 ms median per
SciFact query). The price is space: about 150 bytes a posting with both
indexes, 100 MB for SciFact's 0.7 M postings against 40 MB for its chunks,
vectors and HNSW index. pgvector sparsevec weights would bake N and the
average length into every stored vector, stale after the next write; ts_rank
has no corpus statistics at all.

The title is indexed with every chunk of its document: a chunk of a long
document otherwise loses the words that say what the document is about. On
SciFact train (bench/keyword_leg.py --sweep) that lifts nDCG@10 from 0.672 to
0.694, where ts_rank over the same lexemes gives 0.614 and bm25s over whole
documents 0.696. k1 and b barely matter there (0.688..0.694 over k1 0.9..1.5,
b 0.5..0.9), so the textbook 1.2 and 0.75 stay.

This module is the query side: BM25's parameters and the SQL that scores a
query. The postings and statistics are written by the store's writes
(store/writes.py), in the transactions that add or remove chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# The keyword leg as CTEs ending in `keyword (id, score, rank)`: the best
# `depth` chunks by BM25, ranked 1.. by score, then chunk id. $1 is the
# namespace; the other placeholders are filled in by the caller. Every chunk
# holding a query lexeme is scored (no early termination), which reads one
# index range per lexeme.
KEYWORD_LEG_SQL = """
keyword_postings AS MATERIALIZED (
    SELECT p.chunk_id, p.lexeme, p.tf, p.chunk_length
    FROM rag_postings p
    WHERE p.namespace = $1
      AND p.lexeme = ANY (ARRAY(SELECT t.lexeme FROM unnest(to_tsvector({config}::regconfig, {text})) AS t))
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
),
keyword_hits AS MATERIALIZED (
    SELECT s.id, s.score
    FROM keyword_scores s
    {filter_join}
    ORDER BY s.score DESC, s.id
    LIMIT {depth}
),
keyword AS (
    SELECT id, score, row_number() OVER (ORDER BY score DESC, id) AS rank FROM keyword_hits
)"""

# A metadata filter in the keyword leg: only scored chunks that pass it rank.
KEYWORD_FILTER_JOIN_SQL = "JOIN rag_chunks c ON c.id = s.id WHERE {filter}"
