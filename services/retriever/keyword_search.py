"""The keyword leg's search: exact BM25 top-k that reads only what can still change the answer.

The index (keyword_index.py) keeps each lexeme's postings in blocks of up to
BLOCK_SIZE (chunk id, tf, length), each block with the largest tf and the
shortest chunk length among its postings, and keeps each chunk's own lexemes
(a tsvector) beside it. BM25's term contribution
`idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avglen))` grows with tf
and shrinks with length, so `idf * f(max_tf, min_length)` bounds every posting
of a block, whatever N, df and avglen are when the query runs: bounds are
computed per query from exact statistics, never stored stale.

The search is the threshold algorithm (Fagin, Lotem and Naor) over blocks,
with sorted access in descending block bound and random access to a chunk's
own lexemes:

1. Read every query lexeme's block headers (an index-only scan): df is the sum
   of their posting counts, so idf is exact, and each block gets its bound.
2. Read blocks in descending bound, a batch per round trip. Each posting adds
   its exact contribution to its chunk's partial score, a lower bound of the
   chunk's score.
3. theta is the depth-th best lower bound (exact scores where known).
   A chunk not seen in any block read so far scores at most the frontier: the
   sum over lexemes of the best bound among that lexeme's unread blocks. Once
   the frontier is below theta, no unseen chunk can rank, and reading stops.
4. A seen chunk can rank only if its partial score plus the frontier of the
   lexemes it was not seen in reaches theta. Those few are scored exactly from
   their own lexemes (random access), and the best `depth` are the answer.

Why this method and not (block-max) WAND or MaxScore: those walk posting lists
in chunk id order, skipping ahead cursor by cursor, which costs a round trip
or a row per skip in SQL. Here every step is a set operation PostgreSQL does
in one statement (fetch these blocks, score these chunks), the number of round
trips grows with the logarithm of the blocks read (batches double), and blocks
can be ordered by impact rather than by id, which is what makes their bounds
tight: the compactor sorts each lexeme's postings by (tf descending, length),
so the first few blocks of a lexeme hold its best postings and the bounds of
the rest fall quickly.

Exact, not approximate: theta only ever counts real chunks at scores they
reach (filtered searches count only chunks that pass the filter), bounds only
ever overestimate, and a small relative margin keeps chunks that tie theta to
the last bit, so the top `depth` and their scores are those of the exhaustive
scorer (EXHAUSTIVE_KEYWORD_SQL, the test oracle), ties broken by chunk id as
there. All reads run in the caller's REPEATABLE READ transaction, one
snapshot, so the statistics, headers, blocks and lexemes agree under
concurrent writes.

Cost: the headers of the query's lexemes (one index row per BLOCK_SIZE
postings), the blocks read, and one random access per chunk that could still
rank. The worst case, a filter that almost nothing passes, reads every block
of the query's lexemes once: the exhaustive cost, over compact blocks. A filter
that at most FILTER_FIRST_CHUNKS chunks pass is scored directly from those
chunks' lexemes instead. Queries of more than MAX_QUERY_TERMS distinct lexemes
are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

from services.common.errors import InvalidArgument
from services.retriever.filters import Filter, compile_filter
from services.retriever.keyword import Bm25
from services.retriever.keyword_index import BLOCK_SIZE

# More distinct lexemes than any question needs (a 4,000-character question
# has a few hundred words); each costs an index range of headers.
MAX_QUERY_TERMS = 256

# Scoring a chunk exactly from its own lexemes costs about as much as reading
# this many postings in blocks (measured: about 3.5 us a chunk against 0.3 us a
# posting); it decides between scoring the contenders and reading on.
SCORING_COST_IN_POSTINGS = 12

# A filter passed by this many chunks or fewer is scored chunk by chunk: it
# costs a random access per chunk, less than reading blocks whose chunks the
# filter mostly drops.
FILTER_FIRST_CHUNKS = 2000

# Scores are sums of floats in whatever order each side adds them: a chunk
# within this relative margin of theta is kept, so ties are never lost.
_MARGIN = 1e-9

_STATISTICS_SQL = """
SELECT tsvector_to_array(to_tsvector($2::regconfig, $3)) AS terms, s.chunks, s.total_length
FROM (SELECT 1) AS one
LEFT JOIN rag_keyword_stats s ON s.namespace = $1
"""

# The headers of the query lexemes' blocks (arrays NULL: read on demand), and
# whole the postings not in blocks yet, each as a block of one: those of fresh
# chunks the compactor has not reached, and rag_postings of a database written
# before blocks until it is converted.
_HEADERS_SQL = """
SELECT b.lexeme, b.id, b.postings, b.max_tf, b.min_length,
       NULL::bigint[] AS chunk_ids, NULL::int[] AS tfs, NULL::int[] AS lengths
FROM rag_keyword_blocks b
WHERE b.namespace = $1 AND b.lexeme = ANY ($2::text[])
UNION ALL
SELECT t.lexeme, NULL, 1, cardinality(t.positions), f.length,
       ARRAY[f.chunk_id], ARRAY[cardinality(t.positions)], ARRAY[f.length]
FROM rag_keyword_fresh f
CROSS JOIN LATERAL unnest(ts_filter(setweight(f.lexemes, 'A', $2::text[]), '{a}')) AS t
WHERE f.namespace = $1 AND tsvector_to_array(f.lexemes) && $2::text[]
UNION ALL
SELECT p.lexeme, NULL, 1, p.tf, p.chunk_length, ARRAY[p.chunk_id], ARRAY[p.tf], ARRAY[p.chunk_length]
FROM rag_postings p
WHERE p.namespace = $1 AND p.lexeme = ANY ($2::text[])
"""

# The arrays in PostgreSQL's binary array format (array_send), which numpy
# reads in place: four times cheaper than building Python lists of them.
_BLOCKS_SQL = """
SELECT b.lexeme, array_send(b.chunk_ids) AS chunk_ids, array_send(b.tfs) AS tfs,
       array_send(b.lengths) AS lengths
FROM rag_keyword_blocks b
WHERE b.namespace = $1 AND b.id = ANY ($2::bigint[])
"""

# A chunk's tf for each query lexeme, from its own lexemes: setweight marks
# the query's lexemes, ts_filter keeps only them (both by binary search in the
# sorted tsvector), so the cost is per chunk, not per lexeme of the chunk.
# The lexemes are those of a compacted chunk, else of a fresh one; a chunk
# written before chunk lexemes existed (not converted yet) is read from its
# text. The Append stops at the first source that has the chunk.
_RESOLVE_SQL = """
SELECT i.id, v.length, t.lexeme, cardinality(t.positions) AS tf
FROM unnest($2::bigint[]) AS i (id)
{join}
CROSS JOIN LATERAL (
    SELECT l.lexemes, l.length FROM rag_chunk_lexemes l WHERE l.chunk_id = i.id AND l.namespace = $1
    UNION ALL
    SELECT f.lexemes, f.length FROM rag_keyword_fresh f WHERE f.chunk_id = i.id AND f.namespace = $1
    UNION ALL
    SELECT w.lexemes, (SELECT sum(cardinality(a.positions)) FROM unnest(w.lexemes) AS a)::int
    FROM (
        SELECT to_tsvector($4::regconfig, d.title || ' ' || c.text) AS lexemes
        FROM rag_chunks c JOIN rag_documents d ON d.namespace = c.namespace AND d.document_id = c.document_id
        WHERE c.namespace = $1 AND c.id = i.id
    ) AS w
    LIMIT 1
) AS v
CROSS JOIN LATERAL unnest(ts_filter(setweight(v.lexemes, 'A', $3::text[]), '{{a}}')) AS t
"""
_RESOLVE_FILTER_JOIN = "JOIN rag_chunks fc ON fc.id = i.id AND fc.namespace = $1 AND {filter}"

# The chunks a filter passes, counted up to one more than FILTER_FIRST_CHUNKS.
_FILTERED_CHUNKS_SQL = "SELECT c.id FROM rag_chunks c WHERE c.namespace = $1 AND {filter} LIMIT $2"


@dataclass(frozen=True, slots=True)
class KeywordLeg:
    """The best chunks by BM25, best first, with what it took to find them."""

    chunk_ids: list[int]
    scores: list[float]
    terms: int = 0
    blocks: int = 0
    blocks_read: int = 0
    postings_read: int = 0
    chunks_scored: int = 0
    # True when blocks were left unread because they could not change the answer.
    terminated_early: bool = False


@dataclass
class _Query:
    """One query's lexemes, their statistics and their blocks' bounds."""

    namespace: str
    terms: list[str]
    idf: npt.NDArray[np.float64]
    avg_length: float
    bm25: Bm25
    term_of: dict[str, int]
    # Blocks in the order they are read: descending bound.
    block_ids: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    block_terms: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    block_postings: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    # Per term, its blocks' bounds in descending order (what the frontier walks).
    term_bounds: list[npt.NDArray[np.float64]] = field(default_factory=list)

    def contribution(
        self, terms: npt.NDArray[np.int64], tfs: npt.NDArray[np.float64], lengths: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """BM25's term contribution, in the order of operations the exhaustive SQL uses."""
        k1, b = self.bm25.k1, self.bm25.b
        return np.asarray(
            self.idf[terms] * tfs * (k1 + 1) / (tfs + k1 * (1 - b + b * lengths / self.avg_length)),
            dtype=np.float64,
        )


async def search_keyword(
    conn: asyncpg.Connection,
    namespace: str,
    text: str,
    depth: int,
    *,
    text_search_config: str,
    bm25: Bm25,
    filter: Filter | None = None,
) -> KeywordLeg:
    """The top `depth` chunks of `namespace` by BM25 for `text`, exact, in the caller's transaction.

    The caller holds a REPEATABLE READ transaction, so every statement here
    reads one snapshot. InvalidArgument for a query of more than
    MAX_QUERY_TERMS distinct lexemes; no lexemes at all (only stop words)
    finds nothing.
    """
    row = await conn.fetchrow(_STATISTICS_SQL, namespace, text_search_config, text)
    terms: list[str] = list(row["terms"])
    if len(terms) > MAX_QUERY_TERMS:
        raise InvalidArgument(
            f"query_text must hold at most {MAX_QUERY_TERMS} distinct words once stop words are dropped "
            f"for a keyword search, got {len(terms)}",
            field="query_text",
        )
    if not terms or not row["chunks"] or not row["total_length"]:
        return KeywordLeg([], [], terms=len(terms))
    headers = await conn.fetch(_HEADERS_SQL, namespace, terms)
    query, unsorted = _plan(namespace, terms, headers, int(row["chunks"]), int(row["total_length"]), bm25)
    scores = _ExactScores(conn, query, text_search_config, filter)
    if filter is not None:
        passing = await scores.chunks_passing_if_few()
        if passing is not None:
            await scores.resolve(passing)
            return scores.leg(depth, blocks_read=0, postings_read=0, terminated_early=True)
    scan = _Scan(query)
    scan.add(*unsorted)
    seen = scan.seen()
    read = 0
    # The first round trip fetches, per query lexeme, about its best block, and
    # enough blocks besides to hold `depth` postings; each later round fetches
    # twice as many as the one before, so a search that must read B blocks
    # takes about log2(B / first batch) round trips.
    batch = len(terms) + -(-depth // BLOCK_SIZE)
    while read < len(query.block_ids):
        ids = query.block_ids[read : read + batch]
        scan.add(*_postings(query, await conn.fetch(_BLOCKS_SQL, namespace, ids.tolist())))
        read += len(ids)
        batch *= 2
        scan.count_read(query.block_terms[:read])
        seen = scan.seen()
        theta = scores.theta(seen, depth)
        if filter is not None and theta == 0:
            # Only chunks known to pass the filter may set theta: score the
            # most promising exactly, or reading could never stop.
            await scores.resolve(seen.best_pending(scores, depth))
            theta = scores.theta(seen, depth)
        theta *= 1 - _MARGIN
        if scan.frontier() >= theta:
            continue  # a chunk in no block read yet could still rank
        # Every chunk that can rank has been seen. Score the contenders
        # exactly now, or read on (which lowers their bounds) when that is
        # cheaper than scoring them.
        unresolved = int(np.count_nonzero((seen.possible() >= theta) & (seen.missing > 0)))
        next_postings = int(query.block_postings[read : read + batch].sum())
        if unresolved * SCORING_COST_IN_POSTINGS <= next_postings:
            break
    # `seen` is of every block read: the loop refreshes it after each batch.
    theta = scores.theta(seen, depth) * (1 - _MARGIN)
    contenders = seen.possible() >= theta
    # A chunk whose unseen lexemes can add nothing has its exact score already.
    complete = contenders & (seen.missing == 0)
    scores.accept(seen.chunk_ids[complete], seen.partial[complete])
    await scores.resolve(seen.chunk_ids[contenders & ~complete].tolist())
    return scores.leg(
        depth, blocks_read=read, postings_read=scan.postings, terminated_early=read < len(query.block_ids)
    )


def _plan(
    namespace: str, terms: list[str], headers: Sequence[asyncpg.Record], chunks: int, length: int, bm25: Bm25
) -> tuple[_Query, _Postings]:
    """The query's idf and its blocks in reading order; also the postings not in blocks, scored."""
    term_of = {term: i for i, term in enumerate(terms)}
    blocks = [h for h in headers if h["id"] is not None]
    count = len(blocks)
    block_terms = np.fromiter((term_of[h["lexeme"]] for h in blocks), dtype=np.int64, count=count)
    df = np.bincount(block_terms, weights=[h["postings"] for h in blocks], minlength=len(terms)).astype(
        np.float64
    )
    unsorted = [h for h in headers if h["id"] is None]
    df += np.bincount(
        [term_of[h["lexeme"]] for h in unsorted],
        weights=[h["postings"] for h in unsorted],
        minlength=len(terms),
    )
    n = float(chunks)
    query = _Query(
        namespace=namespace,
        terms=terms,
        term_of=term_of,
        idf=np.log(1 + (n - df + 0.5) / (df + 0.5)),
        avg_length=length / n,
        bm25=bm25,
    )
    max_tf = np.fromiter((h["max_tf"] for h in blocks), dtype=np.float64, count=count)
    min_length = np.fromiter((h["min_length"] for h in blocks), dtype=np.float64, count=count)
    bounds = query.contribution(block_terms, max_tf, min_length)
    order = np.argsort(-bounds, kind="stable")
    query.block_ids = np.fromiter((h["id"] for h in blocks), dtype=np.int64, count=count)[order]
    query.block_terms = block_terms[order]
    query.block_postings = np.fromiter((h["postings"] for h in blocks), dtype=np.int64, count=count)[order]
    block_bounds = bounds[order]
    query.term_bounds = [block_bounds[query.block_terms == t] for t in range(len(terms))]
    return query, _postings(query, unsorted)


_Postings = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]


def _postings(query: _Query, rows: Sequence[asyncpg.Record]) -> _Postings:
    """(chunk, term, exact contribution) for every posting of the rows: arrays as lists or as array_send."""
    if not rows:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float64)
    tf_arrays = [_int_array(row["tfs"], _INT_ELEMENTS) for row in rows]
    chunk_ids = np.concatenate([_int_array(row["chunk_ids"], _BIGINT_ELEMENTS) for row in rows])
    tfs = np.concatenate(tf_arrays).astype(np.float64)
    lengths = np.concatenate([_int_array(row["lengths"], _INT_ELEMENTS) for row in rows]).astype(np.float64)
    row_terms = np.fromiter((query.term_of[row["lexeme"]] for row in rows), np.int64, len(rows))
    terms = np.repeat(row_terms, [len(array) for array in tf_arrays])
    return chunk_ids, terms, query.contribution(terms, tfs, lengths)


# array_send's layout for a one-dimensional array without NULLs: a 20-byte
# header (dimensions, flags, element type, length, lower bound), then each
# element as its 4-byte length and its big-endian value.
_ARRAY_HEADER_BYTES = 20
_BIGINT_ELEMENTS = np.dtype([("length", ">i4"), ("value", ">i8")])
_INT_ELEMENTS = np.dtype([("length", ">i4"), ("value", ">i4")])


def _int_array(value: bytes | list[int], elements: np.dtype[Any]) -> npt.NDArray[np.int64]:
    if isinstance(value, bytes):
        if len(value) <= _ARRAY_HEADER_BYTES:  # an empty array has a shorter header and no elements
            return np.empty(0, dtype=np.int64)
        return np.frombuffer(value, elements, offset=_ARRAY_HEADER_BYTES)["value"].astype(np.int64)
    return np.asarray(value, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class _Seen:
    """The chunks seen in the blocks read so far (sorted by id), with what is known of their scores."""

    chunk_ids: npt.NDArray[np.int64]
    # The contributions read: a lower bound of the score.
    partial: npt.NDArray[np.float64]
    # The most the lexemes it was not seen in can still add.
    missing: npt.NDArray[np.float64]

    def possible(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.partial + self.missing, dtype=np.float64)

    def best_pending(self, scores: _ExactScores, depth: int) -> list[int]:
        """The `depth` chunks with the best partial scores among those not scored exactly yet."""
        pending = ~np.isin(self.chunk_ids, scores.known_ids())
        order = np.argsort(-self.partial[pending], kind="stable")[:depth]
        return [int(c) for c in self.chunk_ids[pending][order]]


class _Scan:
    """Postings read so far, and per lexeme how many of its blocks were read."""

    def __init__(self, query: _Query) -> None:
        self._query = query
        self._parts: list[_Postings] = []
        self._read_per_term = np.zeros(len(query.terms), dtype=np.int64)
        self.postings = 0

    def add(
        self,
        chunk_ids: npt.NDArray[np.int64],
        terms: npt.NDArray[np.int64],
        contributions: npt.NDArray[np.float64],
    ) -> None:
        self._parts.append((chunk_ids, terms, contributions))
        self.postings += len(chunk_ids)

    def count_read(self, block_terms: npt.NDArray[np.int64]) -> None:
        self._read_per_term = np.bincount(block_terms, minlength=len(self._query.terms))

    def unread_bounds(self) -> npt.NDArray[np.float64]:
        """Per lexeme, the bound of its best unread block (0 when all are read)."""
        return np.array(
            [
                bounds[read] if read < len(bounds) else 0.0
                for bounds, read in zip(self._query.term_bounds, self._read_per_term, strict=True)
            ],
            dtype=np.float64,
        )

    def frontier(self) -> float:
        """The most a chunk seen in no block read so far can score."""
        return float(self.unread_bounds().sum())

    def seen(self) -> _Seen:
        chunk_ids = np.concatenate([p[0] for p in self._parts])
        terms = np.concatenate([p[1] for p in self._parts])
        contributions = np.concatenate([p[2] for p in self._parts])
        unique, inverse = np.unique(chunk_ids, return_inverse=True)
        partial = np.asarray(np.bincount(inverse, weights=contributions, minlength=len(unique)), np.float64)
        unread = self.unread_bounds()
        unread_seen = np.bincount(inverse, weights=unread[terms], minlength=len(unique))
        return _Seen(unique, partial, np.maximum(unread.sum() - unread_seen, 0.0))


class _ExactScores:
    """Exact scores of chunks, from their own lexemes, and the filter's verdict on them."""

    def __init__(
        self, conn: asyncpg.Connection, query: _Query, text_search_config: str, filter: Filter | None
    ) -> None:
        self._conn = conn
        self._query = query
        self._filter = filter
        params: list[object] = [query.namespace, None, query.terms, text_search_config]
        join = ""
        if filter is not None:
            join = _RESOLVE_FILTER_JOIN.format(filter=compile_filter(filter, params, "fc.metadata"))
        self._sql = _RESOLVE_SQL.format(join=join)
        self._params = params
        # Every chunk looked at: its exact score, or None when the filter drops it.
        self._scored: dict[int, float | None] = {}

    def known_ids(self) -> npt.NDArray[np.int64]:
        return np.fromiter(self._scored, dtype=np.int64, count=len(self._scored))

    def passing(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        kept = [(c, s) for c, s in self._scored.items() if s is not None]
        return (
            np.fromiter((c for c, _ in kept), dtype=np.int64, count=len(kept)),
            np.fromiter((s for _, s in kept), dtype=np.float64, count=len(kept)),
        )

    def theta(self, seen: _Seen, depth: int) -> float:
        """The depth-th best score that chunks known to pass the filter reach (0 if fewer are known).

        Without a filter every seen chunk passes, at its partial score at least.
        """
        ids, exact = self.passing()
        known = exact
        if self._filter is None:
            known = seen.partial.copy()
            known[np.searchsorted(seen.chunk_ids, ids)] = exact
        if len(known) < depth:
            return 0.0
        return float(np.partition(known, len(known) - depth)[len(known) - depth])

    def accept(self, chunk_ids: npt.NDArray[np.int64], exact: npt.NDArray[np.float64]) -> None:
        """Scores known exactly from the blocks; with a filter they still need its verdict."""
        if self._filter is not None:
            return
        for c, score in zip(chunk_ids.tolist(), exact.tolist(), strict=True):
            self._scored.setdefault(c, score)

    async def chunks_passing_if_few(self) -> list[int] | None:
        """Every chunk the filter passes, or None when there are more than FILTER_FIRST_CHUNKS."""
        assert self._filter is not None
        params: list[object] = [self._query.namespace, FILTER_FIRST_CHUNKS + 1]
        sql = _FILTERED_CHUNKS_SQL.format(filter=compile_filter(self._filter, params, "c.metadata"))
        rows = await self._conn.fetch(sql, *params)
        return None if len(rows) > FILTER_FIRST_CHUNKS else [row["id"] for row in rows]

    async def resolve(self, chunk_ids: list[int]) -> None:
        """Score these chunks exactly (one statement); a chunk the filter drops scores None."""
        pending = [c for c in chunk_ids if c not in self._scored]
        if not pending:
            return
        params = list(self._params)
        params[1] = pending
        rows = await self._conn.fetch(self._sql, *params)
        self._scored.update(dict.fromkeys(pending))
        if not rows:
            return
        count = len(rows)
        found = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=count)
        terms = np.fromiter((self._query.term_of[r["lexeme"]] for r in rows), dtype=np.int64, count=count)
        tfs = np.fromiter((r["tf"] for r in rows), dtype=np.float64, count=count)
        lengths = np.fromiter((r["length"] for r in rows), dtype=np.float64, count=count)
        unique, inverse = np.unique(found, return_inverse=True)
        contributions = self._query.contribution(terms, tfs, lengths)
        totals = np.bincount(inverse, weights=contributions, minlength=len(unique))
        self._scored.update(zip(unique.tolist(), totals.tolist(), strict=True))

    def leg(self, depth: int, *, blocks_read: int, postings_read: int, terminated_early: bool) -> KeywordLeg:
        ids, exact = self.passing()
        order = np.lexsort((ids, -exact))[:depth]
        return KeywordLeg(
            chunk_ids=ids[order].tolist(),
            scores=exact[order].tolist(),
            terms=len(self._query.terms),
            blocks=len(self._query.block_ids),
            blocks_read=blocks_read,
            postings_read=postings_read,
            chunks_scored=len(self._scored),
            terminated_early=terminated_early,
        )
