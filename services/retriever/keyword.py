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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.common.errors import InvalidArgument

# A query is a question, not a document; far longer text is a caller bug.
MAX_QUERY_TEXT_CHARS = 10_000


@dataclass(frozen=True, slots=True)
class Bm25:
    """BM25's term-frequency saturation (k1) and length normalisation (b)."""

    k1: float = 1.2
    b: float = 0.75

    def __post_init__(self) -> None:
        # Configuration, not caller input: ValueError.
        if not (math.isfinite(self.k1) and self.k1 >= 0):
            raise ValueError(f"BM25 k1 must be a finite number >= 0, got {self.k1}")
        if not 0 <= self.b <= 1:
            raise ValueError(f"BM25 b must be 0..1, got {self.b}")


def require_query_text(text: str | None, mode: str, field: str = "query_text") -> str:
    """The text a search in `mode` ranks by: not blank, not huge, no NUL (which PostgreSQL refuses)."""
    if text is None or not text.strip():
        raise InvalidArgument(
            f"{field} must not be empty or blank in {mode} mode: the keyword leg ranks by it", field=field
        )
    if len(text) > MAX_QUERY_TEXT_CHARS:
        raise InvalidArgument(
            f"{field} must be at most {MAX_QUERY_TEXT_CHARS} characters, got {len(text)}", field=field
        )
    if "\x00" in text:
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    return text


# After a document's chunks are written: index them and move the namespace's
# statistics, in one statement. $1 namespace, $2 document id, $3 text search
# config, $4 title, $5 chunks added minus chunks removed, $6 the keyword length
# of the version replaced (0 for a new document). The statistics row is the
# one every writer of the namespace updates, so it comes last in the
# transaction: the row lock is held only until commit. The same update bumps
# the namespace's index version: the lock orders the bumps as the commits, so
# no two writes share a version and a version seen means its write is visible.
INDEX_DOCUMENT_SQL = """
WITH postings AS (
    INSERT INTO rag_postings (chunk_id, namespace, lexeme, tf, chunk_length)
    SELECT c.id, c.namespace, t.lexeme, cardinality(t.positions),
           sum(cardinality(t.positions)) OVER (PARTITION BY c.id)
    FROM rag_chunks c
    CROSS JOIN unnest(to_tsvector($3::regconfig, $4 || ' ' || c.text)) AS t
    WHERE c.namespace = $1 AND c.document_id = $2
    RETURNING tf
),
indexed AS (
    SELECT coalesce(sum(tf), 0)::bigint AS length FROM postings
),
document AS (
    UPDATE rag_documents d SET keyword_length = i.length
    FROM indexed i
    WHERE d.namespace = $1 AND d.document_id = $2
)
INSERT INTO rag_keyword_stats AS s (namespace, chunks, total_length, version)
SELECT $1, $5, i.length - $6, 1 FROM indexed i
ON CONFLICT (namespace) DO UPDATE
SET chunks = s.chunks + excluded.chunks,
    total_length = s.total_length + excluded.total_length,
    version = s.version + 1
"""

# Deletes documents (their chunks and postings go by cascade), clears their
# failure records and those of the ids in $2 (stored or not), and takes them
# out of the namespace's statistics, bumping its index version when a stored
# document went. {selection} is SQL from our code.
#
# Rows are locked in the order every writer takes them, so none can deadlock
# another: documents, then failure records in document id order (as
# RecordFailures writes them), then the statistics row. `totals` counts the
# cleared failures only so that `stats`, which reads it, runs after them:
# PostgreSQL otherwise finishes unreferenced CTEs last, in an order of its own.
DELETE_DOCUMENTS_SQL = """
WITH deleted AS (
    DELETE FROM rag_documents d WHERE d.namespace = $1 AND ({selection})
    RETURNING d.document_id, d.chunk_count, d.keyword_length
),
failures AS (
    DELETE FROM rag_document_failures f
    WHERE f.namespace = $1 AND f.document_id IN (
        SELECT l.document_id FROM rag_document_failures l
        WHERE l.namespace = $1
          AND (l.document_id = ANY ($2::text[]) OR l.document_id IN (SELECT document_id FROM deleted))
        ORDER BY l.document_id
        FOR UPDATE
    )
    RETURNING 1
),
totals AS (
    SELECT count(*) AS documents,
           coalesce(sum(chunk_count), 0) AS chunks,
           coalesce(sum(keyword_length), 0) AS length,
           (SELECT count(*) FROM failures) AS failures
    FROM deleted
),
stats AS (
    UPDATE rag_keyword_stats s
    SET chunks = s.chunks - t.chunks, total_length = s.total_length - t.length, version = s.version + 1
    FROM totals t
    WHERE s.namespace = $1 AND t.documents > 0
)
SELECT documents, chunks FROM totals
"""

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
