"""The pruned keyword leg equals the exhaustive scorer, and its index stays whole through every write.

Random corpora with Zipf-skewed words, short and long chunks, deletes and
re-ingests, searched with random queries at several depths, with and without
filters: the pruned search (keyword_search.py) must return exactly the ids and
scores of the exhaustive statement (keyword.search_exhaustively), before and
after compaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.retriever.filters import FieldEquals, Filter, Not
from services.retriever.keyword import Bm25, search_exhaustively
from services.retriever.keyword_index import BLOCK_SIZE
from services.retriever.keyword_search import FILTER_FIRST_CHUNKS, MAX_QUERY_TERMS, KeywordLeg, search_keyword
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput
from tests.retriever.conftest import DIMENSION

# Pseudo-words (to_tsvector keeps them as they are) and a few stop words it drops.
VOCABULARY = [f"w{i}x" for i in range(400)]
STOP_WORDS = ["the", "of", "and", "a", "to", "in"]


def random_text(rng: np.random.Generator, words: int) -> str:
    # Zipf over the vocabulary: a few words in most chunks, most in a few.
    ranks = np.minimum(rng.zipf(1.3, words), len(VOCABULARY)) - 1
    picked = [VOCABULARY[r] for r in ranks]
    picked += list(rng.choice(STOP_WORDS, size=words // 5))
    rng.shuffle(picked)
    return " ".join(picked)


def random_document(rng: np.random.Generator, document_id: str, version: int = 0) -> DocumentInput:
    chunks = []
    for index in range(int(rng.integers(1, 6))):
        # Short and long chunks: lengths matter to BM25 and to the block bounds.
        text = random_text(rng, int(rng.choice([3, 12, 40, 150])))
        vector = rng.standard_normal(DIMENSION).astype(np.float32)
        chunks.append(ChunkInput(index, text, vector, 0, len(text)))
    title = random_text(rng, int(rng.integers(0, 4)))
    metadata = {"bucket": int(rng.integers(0, 4)), "version": version}
    return DocumentInput(document_id, f"{document_id}-v{version}", title, metadata, chunks)


def pick(rng: np.random.Generator, ids: list[str], count: int) -> list[str]:
    return [str(i) for i in rng.choice(ids, count, replace=False)]


def random_query(rng: np.random.Generator) -> str:
    return random_text(rng, int(rng.integers(1, 9)))


async def pruned(
    conn: asyncpg.Connection, namespace: str, text: str, depth: int, filter: Filter | None = None
) -> KeywordLeg:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await search_keyword(
            conn, namespace, text, depth, text_search_config="english", bm25=Bm25(), filter=filter
        )


async def assert_equals_exhaustive(
    conn: asyncpg.Connection, namespace: str, text: str, depth: int, filter: Filter | None = None
) -> KeywordLeg:
    leg = await pruned(conn, namespace, text, depth, filter)
    expected = await search_exhaustively(
        conn, namespace, text, depth, text_search_config="english", bm25=Bm25(), filter=filter
    )
    assert leg.scores == pytest.approx([score for _, score in expected], rel=1e-9, abs=1e-12), text
    # Ids equal, except where two scores tie to the last bits: summing in
    # another order may then swap them.
    found = zip(leg.chunk_ids, leg.scores, strict=True)
    for (expected_id, expected_score), (chunk_id, score) in zip(expected, found, strict=True):
        if chunk_id != expected_id:
            assert score == pytest.approx(expected_score, rel=1e-9), (text, chunk_id, expected_id)
    assert set(leg.chunk_ids) == {i for i, _ in expected} or _tied_at_the_end(expected, leg)
    return leg


def _tied_at_the_end(expected: Sequence[tuple[int, float]], leg: KeywordLeg) -> bool:
    """Different ids only among chunks tied with the last place kept."""
    if not expected:
        return False
    last = expected[-1][1]
    differing = {i for i, _ in expected} ^ set(leg.chunk_ids)
    scores = dict(expected) | dict(zip(leg.chunk_ids, leg.scores, strict=True))
    return all(scores[i] == pytest.approx(last, rel=1e-9) for i in differing)


async def assert_index_is_whole(conn: asyncpg.Connection, namespace: str) -> None:
    """Blocks and fresh chunks hold the postings of the live chunks' lexemes, once each, with true headers."""
    in_blocks = await conn.fetch(
        """
        SELECT b.lexeme, u.chunk_id, u.tf, u.length
        FROM rag_keyword_blocks b CROSS JOIN unnest(b.chunk_ids, b.tfs, b.lengths) AS u (chunk_id, tf, length)
        WHERE b.namespace = $1
        UNION ALL
        SELECT t.lexeme, f.chunk_id, cardinality(t.positions), f.length
        FROM rag_keyword_fresh f CROSS JOIN unnest(f.lexemes) AS t
        WHERE f.namespace = $1
        ORDER BY 1, 2
        """,
        namespace,
    )
    recounted = await conn.fetch(
        """
        SELECT t.lexeme, c.id AS chunk_id, cardinality(t.positions) AS tf,
               sum(cardinality(t.positions)) OVER (PARTITION BY c.id) AS length
        FROM rag_chunks c
        JOIN rag_documents d ON d.namespace = c.namespace AND d.document_id = c.document_id
        CROSS JOIN unnest(to_tsvector('english', d.title || ' ' || c.text)) AS t
        WHERE c.namespace = $1
        ORDER BY 1, 2
        """,
        namespace,
    )
    assert [tuple(r) for r in in_blocks] == [tuple(r) for r in recounted]
    headers_wrong = await conn.fetchval(
        """
        SELECT count(*) FROM rag_keyword_blocks b
        WHERE b.namespace = $1 AND (
            b.postings <> cardinality(b.chunk_ids)
            OR b.max_tf <> (SELECT max(x) FROM unnest(b.tfs) AS x)
            OR b.min_length <> (SELECT min(x) FROM unnest(b.lengths) AS x)
        )
        """,
        namespace,
    )
    assert headers_wrong == 0


@pytest.fixture
async def conn(store_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(store_dsn)
    yield connection
    await connection.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_corpora_and_queries_match_the_exhaustive_scorer(
    store: ChunkStore, conn: asyncpg.Connection, namespace: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    ids = [f"doc{i}" for i in range(120)]
    await store.upsert(namespace, [random_document(rng, i) for i in ids])
    # Deletes and re-ingests, some before compaction and some after.
    await store.delete(namespace, pick(rng, ids, 10))
    await store.upsert(namespace, [random_document(rng, i, version=1) for i in pick(rng, ids, 15)])
    queries = [random_query(rng) for _ in range(12)]
    filters: list[Filter | None] = [None, FieldEquals("bucket", 1), Not(FieldEquals("bucket", 0))]

    for compacted in (False, True):
        if compacted:
            await store.compact_keyword_index()
            fresh = await conn.fetchval(
                "SELECT count(*) FROM rag_keyword_fresh WHERE namespace = $1", namespace
            )
            assert fresh == 0
        await assert_index_is_whole(conn, namespace)
        for text in queries:
            for depth in (1, 10, 100):
                for metadata_filter in filters:
                    await assert_equals_exhaustive(conn, namespace, text, depth, metadata_filter)

    await store.delete(namespace, pick(rng, ids, 20))
    await store.upsert(namespace, [random_document(rng, i, version=2) for i in pick(rng, ids, 20)])
    await assert_index_is_whole(conn, namespace)
    for text in queries:
        await assert_equals_exhaustive(conn, namespace, text, 10)


async def test_a_common_term_terminates_early_after_compaction(
    store: ChunkStore, conn: asyncpg.Connection, namespace: str
) -> None:
    # One word in every chunk, at tf 1..3 and lengths of 5..400 words (few
    # ties: chunks tied with the last place kept must all be found):
    # exhaustively, every posting is read.
    rng = np.random.default_rng(5)
    documents = []
    for i in range(200):
        chunks = []
        for index in range(10):
            filler = " ".join(rng.choice(VOCABULARY[100:], int(rng.integers(5, 400))))
            text = " ".join(["everywhere"] * int(rng.integers(1, 4))) + " " + filler
            vector = rng.standard_normal(DIMENSION).astype(np.float32)
            chunks.append(ChunkInput(index, text, vector, 0, len(text)))
        documents.append(DocumentInput(f"d{i}", "h", "", {}, chunks))
    await store.upsert(namespace, documents)
    await store.compact_keyword_index()

    leg = await assert_equals_exhaustive(conn, namespace, "everywhere", 10)

    assert leg.blocks == -(-2000 // BLOCK_SIZE)
    assert leg.terminated_early
    assert leg.postings_read < 2000 / 2


async def test_a_filter_few_chunks_pass_is_scored_chunk_by_chunk(
    store: ChunkStore, conn: asyncpg.Connection, namespace: str
) -> None:
    rng = np.random.default_rng(6)
    documents = [random_document(rng, f"d{i}") for i in range(300)]
    documents.append(DocumentInput("rare", "h", "", {"rare": True}, random_document(rng, "x").chunks))
    await store.upsert(namespace, documents)
    text = " ".join(VOCABULARY[:30])

    leg = await assert_equals_exhaustive(conn, namespace, text, 10, FieldEquals("rare", True))

    assert leg.blocks_read == 0
    assert FILTER_FIRST_CHUNKS >= 5


async def test_hostile_queries_get_a_clear_answer(
    store: ChunkStore, conn: asyncpg.Connection, namespace: str
) -> None:
    rng = np.random.default_rng(7)
    await store.upsert(namespace, [random_document(rng, f"d{i}") for i in range(20)])

    too_many = " ".join(f"term{i}x" for i in range(MAX_QUERY_TERMS * 2))
    with pytest.raises(InvalidArgument, match=f"at most {MAX_QUERY_TERMS} distinct words"):
        await pruned(conn, namespace, too_many, 10)
    with pytest.raises(InvalidArgument):
        await store.search_keyword(namespace, too_many, 10)
    # Exactly the limit is fine.
    at_limit = " ".join(VOCABULARY[:50] + [f"term{i}x" for i in range(MAX_QUERY_TERMS - 50)])
    await assert_equals_exhaustive(conn, namespace, at_limit, 10)

    only_stop_words = await pruned(conn, namespace, "the of and a to in", 10)
    assert (only_stop_words.chunk_ids, only_stop_words.terms) == ([], 0)
    unknown = await pruned(conn, namespace, "zzzunknownzzz", 10)
    assert unknown.chunk_ids == []
    assert unknown.blocks == 0
    empty = await pruned(conn, namespace + "-empty", "w1x w2x", 10)
    assert empty.chunk_ids == []


async def test_compaction_racing_deletes_and_reingests_keeps_the_index_whole(
    store: ChunkStore, conn: asyncpg.Connection, namespace: str
) -> None:
    rng = np.random.default_rng(8)
    ids = [f"d{i}" for i in range(200)]
    await store.upsert(namespace, [random_document(rng, i) for i in ids])

    async def churn() -> None:
        for round_ in range(6):
            picked = pick(rng, ids, 12)
            await store.delete(namespace, picked[:6])
            await store.upsert(namespace, [random_document(rng, i, version=round_ + 1) for i in picked])

    async def compact() -> None:
        for _ in range(20):
            await store.maintain_keyword_index()
            await asyncio.sleep(0)

    await asyncio.gather(churn(), compact())
    await assert_index_is_whole(conn, namespace)
    await store.compact_keyword_index()
    await assert_index_is_whole(conn, namespace)
    for _ in range(5):
        await assert_equals_exhaustive(conn, namespace, random_query(rng), 20)
