"""The BM25 keyword leg against a real PostgreSQL: scores, statistics, languages, migration."""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.retriever import schema
from services.retriever.filters import FieldEquals
from services.retriever.hybrid import SearchMode
from services.retriever.keyword import Bm25
from services.retriever.schema import migrate
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput, Hit
from tests.retriever.conftest import DIMENSION

MakeDatabase = Callable[[], Awaitable[str]]

rng = np.random.default_rng(20240602)

CORPUS = {
    "whales": ("Marine mammals", ["Blue whales are the largest animals ever known to have lived."]),
    "krill": ("Ocean food webs", ["Krill feed whales, seals and penguins.", "Krill swarms colour the sea."]),
    "tides": ("", ["Tides rise and fall twice a day, pulled by the moon."]),
    "moon": ("The Moon", ["The moon orbits the earth; its phases repeat every month."]),
    "penguins": ("Birds of the south", ["Penguins cannot fly but swim fast, hunting krill and fish."]),
}


def document(
    document_id: str,
    texts: Sequence[str],
    *,
    title: str = "",
    content_hash: str = "h1",
    metadata: dict[str, Any] | None = None,
) -> DocumentInput:
    chunks = [
        ChunkInput(i, text, rng.standard_normal(DIMENSION).astype(np.float32), 0, len(text))
        for i, text in enumerate(texts)
    ]
    return DocumentInput(document_id, content_hash, title, metadata or {}, chunks)


def corpus_documents(corpus: dict[str, tuple[str, list[str]]] = CORPUS) -> list[DocumentInput]:
    return [document(i, texts, title=title) for i, (title, texts) in corpus.items()]


async def reference_scores(
    db: asyncpg.Connection,
    corpus: dict[str, tuple[str, list[str]]],
    query: str,
    bm25: Bm25 | None = None,
) -> dict[tuple[str, int], float]:
    """BM25 in Python over the lexemes PostgreSQL makes of title + text: what the SQL must match."""
    bm25 = bm25 or Bm25()
    chunks: dict[tuple[str, int], Counter[str]] = {}
    for document_id, (title, texts) in corpus.items():
        for index, text in enumerate(texts):
            chunks[(document_id, index)] = await lexemes(db, f"{title} {text}")
    query_terms = set(await lexemes(db, query))
    n = len(chunks)
    avg_length = sum(sum(tf.values()) for tf in chunks.values()) / n
    df = {term: sum(1 for tf in chunks.values() if term in tf) for term in query_terms}
    scores = {}
    for key, tf in chunks.items():
        length = sum(tf.values())
        score = 0.0
        for term in query_terms & tf.keys():
            idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
            saturation = tf[term] + bm25.k1 * (1 - bm25.b + bm25.b * length / avg_length)
            score += idf * tf[term] * (bm25.k1 + 1) / saturation
        if score:
            scores[key] = score
    return scores


async def lexemes(db: asyncpg.Connection, text: str) -> Counter[str]:
    rows = await db.fetch(
        "SELECT lexeme, cardinality(positions) AS tf FROM unnest(to_tsvector('english', $1))", text
    )
    return Counter({row["lexeme"]: row["tf"] for row in rows})


def scores_of(hits: Sequence[Hit]) -> dict[tuple[str, int], float]:
    return {(hit.document_id, hit.chunk_index): hit.score for hit in hits}


async def assert_matches_reference(
    store: ChunkStore, db: asyncpg.Connection, namespace: str, corpus: dict[str, tuple[str, list[str]]]
) -> None:
    for query in ("whales krill", "the moon and the tides", "penguins fly", "known krill swarm"):
        expected = await reference_scores(db, corpus, query)
        hits = await store.search_keyword(namespace, query, 100)
        assert scores_of(hits) == pytest.approx(expected, rel=1e-9), query
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert [h.keyword.rank for h in hits if h.keyword] == list(range(1, len(hits) + 1))


async def assert_statistics_are_exact(db: asyncpg.Connection, namespace: str) -> None:
    """The maintained statistics equal a recount from the chunks themselves."""
    kept = await db.fetchrow(
        "SELECT chunks, total_length FROM rag_keyword_stats WHERE namespace = $1", namespace
    )
    recount = await db.fetchrow(
        """
        SELECT count(*) AS chunks, coalesce(sum(length), 0) AS total_length FROM (
            SELECT (SELECT coalesce(sum(cardinality(t.positions)), 0)
                    FROM unnest(to_tsvector('english', d.title || ' ' || c.text)) t) AS length
            FROM rag_chunks c JOIN rag_documents d USING (namespace, document_id)
            WHERE c.namespace = $1
        ) lengths
        """,
        namespace,
    )
    assert dict(kept) == dict(recount)


# Ranking


async def test_the_document_holding_a_rare_exact_term_ranks_first(store: ChunkStore, namespace: str) -> None:
    await store.upsert(
        namespace,
        [
            document("generic", ["Backups run every night and are kept for a while."]),
            document("specific", ["The pg_basebackup job writes WAL archives; backups are verified."]),
            document("noise", ["Expense reports are due on Fridays."]),
        ],
    )

    hits = await store.search_keyword(namespace, "when do WAL archives get written", 5)

    assert hits[0].document_id == "specific"
    assert hits[0].keyword is not None
    assert hits[0].keyword.rank == 1
    assert hits[0].dense is None
    assert "noise" not in {h.document_id for h in hits}, "a chunk sharing no lexeme is not a hit"


async def test_stemming_matches_word_forms_and_titles_count(store: ChunkStore, namespace: str) -> None:
    await store.upsert(
        namespace,
        [
            document("body", ["Running a marathon takes months of training."]),
            document("titled", ["Nothing here says it."], title="Marathons"),
            document("other", ["Swimming is good exercise."]),
        ],
    )

    hits = await store.search_keyword(namespace, "marathon runners", 5)

    assert {h.document_id for h in hits} == {"body", "titled"}


async def test_a_query_of_stop_words_only_finds_nothing(store: ChunkStore, namespace: str) -> None:
    await store.upsert(namespace, corpus_documents())

    assert await store.search_keyword(namespace, "the and of it", 10) == []
    hybrid = await store.search(
        namespace, 10, mode=SearchMode.HYBRID, embedding=rng.standard_normal(DIMENSION), text="the and of it"
    )
    assert hybrid, "hybrid still has its dense leg"
    assert all(h.keyword is None and h.dense is not None for h in hybrid)


# Statistics


async def test_scores_are_exact_bm25_and_stay_so_as_documents_change(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    corpus = dict(CORPUS)
    await store.upsert(namespace, corpus_documents(corpus))
    await assert_matches_reference(store, db, namespace, corpus)
    await assert_statistics_are_exact(db, namespace)

    # Delete: N, df and the average length all move.
    assert await store.delete(namespace, ["krill"]) == (1, 2)
    del corpus["krill"]
    await assert_matches_reference(store, db, namespace, corpus)
    await assert_statistics_are_exact(db, namespace)

    # Update: new text and title, another number of chunks.
    corpus["moon"] = ("Lunar facts", ["Krill do not live on the moon.", "Tides follow the moon.", "Phases."])
    await store.upsert(
        namespace, [document("moon", corpus["moon"][1], title="Lunar facts", content_hash="h2")]
    )
    await assert_matches_reference(store, db, namespace, corpus)
    await assert_statistics_are_exact(db, namespace)

    # Add, and delete by filter.
    corpus["seals"] = ("", ["Seals eat krill and fish; whales eat krill."])
    await store.upsert(namespace, [document("seals", corpus["seals"][1], metadata={"drop": True})])
    await assert_matches_reference(store, db, namespace, corpus)
    await store.delete(namespace, filter=FieldEquals("drop", True))
    del corpus["seals"]
    await assert_matches_reference(store, db, namespace, corpus)
    await assert_statistics_are_exact(db, namespace)


async def test_another_namespace_never_changes_the_statistics(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    await store.upsert(namespace, corpus_documents())
    before = await store.search_keyword(namespace, "whales krill moon", 10)

    # The other namespace makes "krill" common and "whales" rare there, and
    # holds the query's exact words: none of it may show here.
    other = f"{namespace}-other"
    await store.upsert(
        other,
        [document(f"k{i}", ["krill krill krill"]) for i in range(20)]
        + [document("exact", ["whales krill moon"])],
    )

    assert await store.search_keyword(namespace, "whales krill moon", 10) == before
    await assert_matches_reference(store, db, namespace, CORPUS)
    assert {h.document_id for h in await store.search_keyword(other, "whales", 10)} == {"exact"}


async def test_statistics_stay_exact_under_concurrent_writers(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    # Every writer moves the same statistics row; none may lose another's update.
    documents = [document(f"d{i}", [f"chunk {i} about krill", f"more words {i}"]) for i in range(24)]
    await asyncio.gather(*(store.upsert(namespace, documents[i::6]) for i in range(6)))
    await assert_statistics_are_exact(db, namespace)

    replacements = [document(f"d{i}", [f"replaced {i}"], content_hash="h2") for i in range(0, 24, 2)]
    await asyncio.gather(
        *(store.upsert(namespace, replacements[i::4]) for i in range(4)),
        *(store.delete(namespace, [f"d{i}"]) for i in range(1, 24, 4)),
    )
    await assert_statistics_are_exact(db, namespace)


async def test_filters_apply_to_the_keyword_leg(store: ChunkStore, namespace: str) -> None:
    await store.upsert(
        namespace,
        [
            document("red", ["Krill krill krill everywhere."], metadata={"team": "red"}),
            document("blue", ["Some krill."], metadata={"team": "blue"}),
        ],
    )

    hits = await store.search_keyword(namespace, "krill", 10, filter=FieldEquals("team", "blue"))

    assert [(h.document_id, h.keyword.rank if h.keyword else None) for h in hits] == [("blue", 1)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "query_text must not be empty or blank in keyword mode"),
        ("  \n", "query_text must not be empty or blank in keyword mode"),
        ("x" * 10_001, "query_text must be at most 10000 characters, got 10001"),
        ("nul\x00", "query_text must not contain NUL characters"),
    ],
)
async def test_bad_query_text_is_refused(store: ChunkStore, namespace: str, text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as raised:
        await store.search_keyword(namespace, text, 5)
    assert raised.value.field == "query_text"


# Language and migration


async def test_the_text_search_config_is_checked_at_start_up(make_database: MakeDatabase) -> None:
    dsn = await make_database()
    with pytest.raises(RuntimeError, match=r"text search configuration 'klingon' does not exist.*english"):
        await ChunkStore.connect(dsn, dimension=DIMENSION, text_search_config="klingon")

    simple = await ChunkStore.connect(dsn, dimension=DIMENSION, text_search_config="simple")
    try:
        await simple.upsert("ns", [document("cats", ["Cats and dogs"])])
        # "simple" neither stems nor drops stop words.
        assert await simple.search_keyword("ns", "cat", 5) == []
        assert [h.document_id for h in await simple.search_keyword("ns", "and", 5)] == ["cats"]
    finally:
        await simple.close()

    with pytest.raises(RuntimeError, match=r"built with text search configuration 'simple'.*'english'"):
        await ChunkStore.connect(dsn, dimension=DIMENSION, text_search_config="english")
    again = await ChunkStore.connect(dsn, dimension=DIMENSION, text_search_config="pg_catalog.simple")
    await again.close()


async def test_migration_indexes_chunks_stored_before_the_keyword_leg(
    make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = await make_database()
    conn = await asyncpg.connect(dsn)
    try:
        with monkeypatch.context() as before_keyword_leg:
            before_keyword_leg.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
            await migrate(conn, dimension=DIMENSION, hnsw_m=16, hnsw_ef_construction=64)
        await conn.execute(
            """
            INSERT INTO rag_documents (namespace, document_id, content_hash, title, chunk_count)
            VALUES ('ns', 'old', 'h', 'Krill', 2), ('ns', 'older', 'h', '', 1), ('other', 'x', 'h', '', 1)
            """
        )
        chunks = [
            ("ns", "old", 0, "swarms in the sea"),
            ("ns", "old", 1, "eaten by whales"),
            ("ns", "older", 0, "whales sing"),
            ("other", "x", 0, "krill krill"),
        ]
        await conn.executemany(
            """
            INSERT INTO rag_chunks
                (namespace, document_id, chunk_index, text, metadata, content_hash, embedding)
            VALUES ($1, $2, $3, $4, '{}', 'h', array_fill(1, ARRAY[$5::int])::vector)
            """,
            [(*chunk, DIMENSION) for chunk in chunks],
        )
        store = await ChunkStore.connect(dsn, dimension=DIMENSION)
        try:
            hits = await store.search_keyword("ns", "krill whales", 10)
            corpus = {
                "old": ("Krill", ["swarms in the sea", "eaten by whales"]),
                "older": ("", ["whales sing"]),
            }
            assert scores_of(hits) == pytest.approx(await reference_scores(conn, corpus, "krill whales"))
            await assert_statistics_are_exact(conn, "ns")
            await assert_statistics_are_exact(conn, "other")
        finally:
            await store.close()
    finally:
        await conn.close()
