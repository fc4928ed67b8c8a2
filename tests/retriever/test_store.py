"""ChunkStore and the schema migration against a real PostgreSQL with pgvector."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
import pytest

from services.common.errors import InvalidArgument, Unavailable
from services.common.limits import EMPTY_DELETE, MAX_METADATA_BYTES
from services.retriever.filters import AnyOf, FieldEquals, NumberRange
from services.retriever.hybrid import Fusion, SearchMode, SearchQuery, dense_hits_sql, dense_leg_sql
from services.retriever.limits import DEFAULT_EF_SEARCH
from services.retriever.schema import MIGRATIONS, migrate
from services.retriever.store import ChunkStore
from services.retriever.store.records import (
    ChunkInput,
    DocumentInput,
    StoredDocument,
    UpsertOutcome,
    UpsertStatus,
)
from tests.retriever.conftest import DIMENSION

MakeDatabase = Callable[[], Awaitable[str]]
Vector = npt.NDArray[np.float32]

rng = np.random.default_rng(20240601)


def random_vector(dimension: int = DIMENSION) -> Vector:
    return rng.standard_normal(dimension).astype(np.float32)


def document(
    document_id: str,
    content_hash: str = "h1",
    texts: Sequence[str] = ("first chunk",),
    *,
    metadata: dict[str, Any] | None = None,
    embeddings: Sequence[Any] | npt.NDArray[Any] | None = None,
    title: str = "",
) -> DocumentInput:
    vectors = embeddings if embeddings is not None else [random_vector() for _ in texts]
    chunks = [
        ChunkInput(index=i, text=text, embedding=vector, start_char=10 * i, end_char=10 * i + len(text))
        for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
    ]
    return DocumentInput(document_id, content_hash, title, metadata or {}, chunks)


async def chunk_texts(db: asyncpg.Connection, namespace: str, document_id: str) -> list[str]:
    rows = await db.fetch(
        "SELECT text FROM rag_chunks WHERE namespace = $1 AND document_id = $2 ORDER BY chunk_index",
        namespace,
        document_id,
    )
    return [row["text"] for row in rows]


async def count_chunks(db: asyncpg.Connection, namespace: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM rag_chunks WHERE namespace = $1", namespace))


def cosine_distances(matrix: Vector, query: Vector) -> npt.NDArray[np.float64]:
    m = matrix.astype(np.float64)
    q = query.astype(np.float64)
    return np.asarray(1.0 - (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q)))


# Schema


async def test_migrate_creates_the_schema_once_even_when_replicas_race(make_database: MakeDatabase) -> None:
    dsn = await make_database()
    conns = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        # Without the advisory lock these would collide on CREATE TABLE.
        await asyncio.gather(
            *(migrate(c, dimension=DIMENSION, hnsw_m=8, hnsw_ef_construction=32) for c in conns)
        )
        await migrate(conns[0], dimension=DIMENSION, hnsw_m=8, hnsw_ef_construction=32)

        versions = [r["version"] for r in await conns[0].fetch("SELECT version FROM rag_schema_migrations")]
        assert versions == [m.version for m in MIGRATIONS]
        indexes = {
            r["indexname"]: r["indexdef"]
            for r in await conns[0].fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'rag_chunks'"
            )
        }
        hnsw = indexes["rag_chunks_embedding_hnsw"]
        assert "hnsw (embedding vector_cosine_ops)" in hnsw
        assert "m='8'" in hnsw
        assert "ef_construction='32'" in hnsw
        assert "gin (metadata jsonb_path_ops)" in indexes["rag_chunks_metadata_gin"]
        column_type = await conns[0].fetchval(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'rag_chunks'::regclass AND attname = 'embedding'"
        )
        assert column_type == f"vector({DIMENSION})"
    finally:
        for c in conns:
            await c.close()


async def test_a_different_dimension_is_refused_and_changes_nothing(make_database: MakeDatabase) -> None:
    dsn = await make_database()
    first = await ChunkStore.connect(dsn, dimension=DIMENSION)
    await first.close()

    with pytest.raises(RuntimeError, match=rf"vector\({DIMENSION}\).*dimension 12"):
        await ChunkStore.connect(dsn, dimension=12)

    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM rag_schema_migrations") == len(MIGRATIONS)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dimension": 0}, "dimension must be an int in 1..2000"),
        ({"dimension": 2001}, "dimension must be an int in 1..2000"),
        ({"hnsw_m": 1}, "hnsw_m must be an int in 2..100"),
        ({"hnsw_m": 16, "hnsw_ef_construction": 31}, "hnsw_ef_construction must be an int in 32..1000"),
    ],
)
async def test_migrate_refuses_settings_pgvector_cannot_index(
    store_dsn: str, settings: dict[str, int], message: str
) -> None:
    arguments: dict[str, Any] = {"dimension": DIMENSION, "hnsw_m": 16, "hnsw_ef_construction": 64, **settings}
    conn = await asyncpg.connect(store_dsn)
    try:
        with pytest.raises(ValueError, match=message):
            await migrate(conn, **arguments)
    finally:
        await conn.close()


# Upsert


async def test_upsert_creates_then_reports_unchanged_then_replaces(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    v1 = document("doc", "h1", ["alpha", "beta", "gamma"], metadata={"lang": "en"}, title="Doc")
    assert await store.upsert(namespace, [v1]) == [UpsertOutcome("doc", UpsertStatus.CREATED, 3)]

    again = document("doc", "h1", ["would not be written"])
    assert await store.upsert(namespace, [again]) == [UpsertOutcome("doc", UpsertStatus.UNCHANGED, 3)]
    assert await chunk_texts(db, namespace, "doc") == ["alpha", "beta", "gamma"]

    v2 = document("doc", "h2", ["delta", "epsilon"], metadata={"lang": "fr"}, title="Doc 2")
    assert await store.upsert(namespace, [v2]) == [UpsertOutcome("doc", UpsertStatus.UPDATED, 2)]
    assert await chunk_texts(db, namespace, "doc") == ["delta", "epsilon"]

    row = await db.fetchrow(
        "SELECT content_hash, title, metadata::text, chunk_count FROM rag_documents"
        " WHERE namespace = $1 AND document_id = 'doc'",
        namespace,
    )
    assert dict(row) == {
        "content_hash": "h2",
        "title": "Doc 2",
        "metadata": '{"lang": "fr"}',
        "chunk_count": 2,
    }
    chunk_copies = await db.fetch(
        "SELECT DISTINCT metadata::text, content_hash FROM rag_chunks WHERE namespace = $1", namespace
    )
    assert [tuple(r) for r in chunk_copies] == [('{"lang": "fr"}', "h2")]


async def test_upsert_stores_chunk_fields_and_accepts_lists_and_arrays(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    as_list = [float(x) for x in range(1, DIMENSION + 1)]
    as_array = np.arange(1, DIMENSION + 1, dtype=np.float64)[::-1]
    await store.upsert(namespace, [document("doc", texts=["one", "two"], embeddings=[as_list, as_array])])

    rows = await db.fetch(
        "SELECT chunk_index, start_char, end_char, embedding::text FROM rag_chunks"
        " WHERE namespace = $1 ORDER BY chunk_index",
        namespace,
    )
    assert [(r["chunk_index"], r["start_char"], r["end_char"]) for r in rows] == [(0, 0, 3), (1, 10, 13)]
    assert rows[0]["embedding"] == "[" + ",".join(str(i) for i in range(1, DIMENSION + 1)) + "]"
    assert rows[1]["embedding"] == "[" + ",".join(str(i) for i in range(DIMENSION, 0, -1)) + "]"


async def test_stored_documents_and_content_hashes(store: ChunkStore, namespace: str) -> None:
    await store.upsert(namespace, [document("a", "ha"), document("b", "hb", ["x", "y"])])

    assert await store.content_hashes(namespace, ["b", "a", "missing"]) == {"a": "ha", "b": "hb"}
    assert await store.stored_documents(namespace, ["b", "missing", "a", "b"]) == [
        StoredDocument("b", "hb", 2),
        StoredDocument("a", "ha", 1),
    ]
    assert await store.content_hashes(namespace, []) == {}
    assert await store.content_hashes(f"{namespace}-other", ["a"]) == {}


@pytest.mark.parametrize(
    ("bad", "message", "field"),
    [
        (
            document("bad", embeddings=[[1.0, 2.0, 3.0]]),
            f"document 'bad' chunk 0: embedding must have {DIMENSION} values"
            " (the configured embedding dimension), got 3",
            "documents[1].chunks[0].embedding",
        ),
        (
            document("bad", embeddings=[np.full(DIMENSION, np.nan)]),
            "document 'bad' chunk 0: embedding values must be finite",
            "documents[1].chunks[0].embedding",
        ),
        (
            document("bad", embeddings=[np.full(DIMENSION, 1e39)]),  # beyond float32
            "document 'bad' chunk 0: embedding values must be finite",
            "documents[1].chunks[0].embedding",
        ),
        (
            document("bad", embeddings=[np.zeros(DIMENSION)]),
            "document 'bad' chunk 0: embedding must not be all zeros",
            "documents[1].chunks[0].embedding",
        ),
        (
            document("bad", embeddings=[["x"] * DIMENSION]),
            "document 'bad' chunk 0: embedding must be a list of numbers",
            "documents[1].chunks[0].embedding",
        ),
        (
            document("bad", texts=[]),
            "documents[1].chunks (count) must be 1..50000, got 0",
            "documents[1].chunks (count)",
        ),
        (
            DocumentInput(
                "bad",
                "h",
                "",
                {},
                [ChunkInput(4, "x", random_vector(), 0, 1), ChunkInput(4, "y", random_vector(), 1, 2)],
            ),
            "document 'bad': chunk index 4 appears more than once",
            "documents[1].chunks[1].index",
        ),
        (
            DocumentInput("bad", "h", "", {}, [ChunkInput(0, "x", random_vector(), 5, 2)]),
            "start_char <= end_char",
            "documents[1].chunks[0].start_char",
        ),
        (document(" "), "documents[1].document_id must not be empty or blank", "documents[1].document_id"),
        (
            document("x" * 257),
            "documents[1].document_id must be at most 256 characters, got 257",
            "documents[1].document_id",
        ),
        (document("a\x00b"), "documents[1].document_id must not contain NUL", "documents[1].document_id"),
        (document("bad", ""), "documents[1].content_hash must not be empty", "documents[1].content_hash"),
        (document("good"), "document 'good' appears more than once", "documents[1].document_id"),
        (
            document("bad", metadata={"score": float("nan")}),
            "metadata must hold only strings, finite numbers",
            "documents[1].metadata",
        ),
        (
            document("bad", metadata={"when": object()}),
            "metadata must hold only strings, finite numbers",
            "documents[1].metadata",
        ),
        (
            document("bad", metadata={"nested": ["ok", "nul\x00here"]}),
            "metadata must not contain NUL",
            "documents[1].metadata",
        ),
        (
            # {"notes":"…"}: 12 bytes around the value.
            document("bad", metadata={"notes": "é" * (MAX_METADATA_BYTES // 2 - 5)}),
            f"documents[1].metadata is {MAX_METADATA_BYTES + 2} bytes as JSON; metadata of at most "
            f"{MAX_METADATA_BYTES} bytes",
            "documents[1].metadata",
        ),
        (document("bad", texts=["nul\x00"]), "text must not contain NUL", "documents[1].chunks[0].text"),
    ],
)
async def test_invalid_documents_are_refused_before_anything_is_written(
    store: ChunkStore, db: asyncpg.Connection, namespace: str, bad: DocumentInput, message: str, field: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as raised:
        await store.upsert(namespace, [document("good"), bad])
    assert raised.value.field == field
    assert await db.fetchval("SELECT count(*) FROM rag_documents WHERE namespace = $1", namespace) == 0
    assert await count_chunks(db, namespace) == 0


async def test_metadata_of_the_largest_size_accepted_is_stored(store: ChunkStore, namespace: str) -> None:
    metadata = {"notes": "x" * (MAX_METADATA_BYTES - 12)}
    await store.upsert(namespace, [document("doc", metadata=metadata)])
    (hit,) = await store.search_keyword(namespace, "chunk", 1)
    assert hit.metadata == metadata


@pytest.mark.parametrize("namespace_value", ["", "UPPER", "a b", "x" * 64, "'; DROP TABLE rag_chunks; --"])
async def test_a_bad_namespace_is_refused(store: ChunkStore, namespace_value: str) -> None:
    with pytest.raises(InvalidArgument, match="namespace must be lower-case letters"):
        await store.upsert(namespace_value, [document("doc")])
    with pytest.raises(InvalidArgument, match="namespace must be"):
        await store.search_dense(namespace_value, random_vector(), 5)
    with pytest.raises(InvalidArgument, match="namespace must be"):
        await store.delete(namespace_value, ["doc"])
    with pytest.raises(InvalidArgument, match="namespace must be"):
        await store.content_hashes(namespace_value, ["doc"])


async def test_a_database_failure_part_way_keeps_the_previous_version(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    await store.upsert(
        namespace, [document("first", "h1", ["first v1"]), document("second", "h1", ["second v1"])]
    )
    # A trigger makes the database itself refuse one chunk, after the
    # document row has been updated and the old chunks deleted.
    await db.execute(
        """
        CREATE FUNCTION test_refuse_chunk() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.text = 'refused by the database' THEN RAISE EXCEPTION 'refused'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_refuse_chunk BEFORE INSERT ON rag_chunks
            FOR EACH ROW EXECUTE FUNCTION test_refuse_chunk();
        """
    )
    try:
        with pytest.raises(asyncpg.RaiseError, match="refused"):
            await store.upsert(
                namespace,
                [
                    document("first", "h2", ["first v2"]),
                    document("second", "h2", ["second v2, chunk 0", "refused by the database"]),
                ],
            )
    finally:
        await db.execute("DROP TRIGGER test_refuse_chunk ON rag_chunks; DROP FUNCTION test_refuse_chunk()")

    # Each document has its own transaction: the first was written, the second kept its old version.
    assert await store.content_hashes(namespace, ["first", "second"]) == {"first": "h2", "second": "h1"}
    assert await chunk_texts(db, namespace, "first") == ["first v2"]
    assert await chunk_texts(db, namespace, "second") == ["second v1"]


async def test_a_cancelled_upsert_keeps_the_previous_version(
    store: ChunkStore, store_dsn: str, db: asyncpg.Connection, namespace: str
) -> None:
    await store.upsert(namespace, [document("doc", "h1", ["v1 a", "v1 b"])])
    blocker = await asyncpg.connect(store_dsn)
    try:
        # Lock the old chunks, so the upsert stops at deleting them: after it
        # has already updated the document row.
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("SELECT 1 FROM rag_chunks WHERE namespace = $1 FOR UPDATE", namespace)
        upsert = asyncio.create_task(store.upsert(namespace, [document("doc", "h2", ["v2"])]))
        await wait_until_blocked(db, "DELETE FROM rag_chunks%")
        upsert.cancel()
        with pytest.raises(asyncio.CancelledError):
            await upsert
        await blocking.rollback()
    finally:
        await blocker.close()

    assert await store.content_hashes(namespace, ["doc"]) == {"doc": "h1"}
    assert await chunk_texts(db, namespace, "doc") == ["v1 a", "v1 b"]
    # The store is still usable afterwards.
    assert await store.upsert(namespace, [document("doc", "h2", ["v2"])]) == [
        UpsertOutcome("doc", UpsertStatus.UPDATED, 1)
    ]


async def wait_until_blocked(db: asyncpg.Connection, query_like: str) -> None:
    for _ in range(500):
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
            query_like,
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no query like {query_like!r} started waiting for a lock")


# Delete


async def test_delete_by_id_and_by_filter_cascades_to_chunks(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    other = f"{namespace}-other"
    docs = [
        document("a", texts=["a0", "a1"], metadata={"team": "red", "year": 2020}),
        document("b", texts=["b0"], metadata={"team": "blue", "year": 2021}),
        document("c", texts=["c0", "c1", "c2"], metadata={"team": "blue", "year": 2024}),
        document("d", texts=["d0"], metadata={"team": "green"}),
    ]
    await store.upsert(namespace, docs)
    await store.upsert(other, docs)

    assert await store.delete(namespace, ["a", "missing"]) == (1, 2)
    assert await store.delete(namespace, filter=FieldEquals("team", "blue")) == (2, 4)
    assert await store.delete(namespace, ["a"], filter=NumberRange("year", gte=2000)) == (0, 0)
    assert await store.content_hashes(namespace, ["a", "b", "c", "d"]) == {"d": "h1"}
    assert await count_chunks(db, namespace) == 1
    # The same ids in another namespace are untouched.
    assert await count_chunks(db, other) == 7
    assert await store.delete(
        other, ["d"], filter=AnyOf((FieldEquals("team", "red"), FieldEquals("year", 2024)))
    ) == (
        3,
        6,
    )
    assert await count_chunks(db, other) == 1


async def test_an_empty_delete_is_refused(store: ChunkStore, namespace: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(EMPTY_DELETE)) as raised:
        await store.delete(namespace)
    assert raised.value.field == "document_ids"


# Search


async def test_search_scores_ranks_and_fields(store: ChunkStore, namespace: str) -> None:
    vectors = np.stack([random_vector() for _ in range(6)])
    await store.upsert(
        namespace,
        [
            document("one", texts=["1a", "1b", "1c"], embeddings=vectors[:3], title="One", metadata={"n": 1}),
            document("two", texts=["2a", "2b", "2c"], embeddings=vectors[3:], title="Two", metadata={"n": 2}),
        ],
    )
    query = random_vector()

    hits = await store.search_dense(namespace, query, 4)

    distances = cosine_distances(vectors, query)
    expected = np.argsort(distances)[:4]
    assert [(h.document_id, h.chunk_index) for h in hits] == [
        ("one" if i < 3 else "two", int(i % 3)) for i in expected
    ]
    for rank, (hit, i) in enumerate(zip(hits, expected, strict=True), start=1):
        assert hit.score == pytest.approx(1.0 - distances[i], abs=1e-5)
        assert hit.dense is not None
        assert hit.dense.rank == rank
        assert hit.dense.score == hit.score
        assert hit.keyword is None
        assert hit.title == ("One" if i < 3 else "Two")
        assert hit.metadata == {"n": 1 if i < 3 else 2}
        assert hit.text == f"{1 if i < 3 else 2}{'abc'[i % 3]}"


async def test_search_never_crosses_namespaces(store: ChunkStore, namespace: str) -> None:
    query = random_vector()
    near, far = f"{namespace}-b", namespace
    # B holds the query vector itself; A only vectors pointing away from it.
    await store.upsert(near, [document("close", texts=["exact match"], embeddings=[query])])
    await store.upsert(far, [document("far", texts=["x", "y"], embeddings=[-query, -query + 0.1])])

    hits = await store.search_dense(far, query, 10)

    assert [h.document_id for h in hits] == ["far", "far"]
    assert all(h.score < 0 for h in hits)
    assert [h.document_id for h in await store.search_dense(near, query, 10)] == ["close"]
    assert await store.search_dense(f"{namespace}-empty", query, 10) == []


@pytest.mark.parametrize(
    ("arguments", "message", "field"),
    [
        ({"top_k": 0}, "top_k must be 1..100, got 0", "top_k"),
        ({"top_k": 101}, "top_k must be 1..100, got 101", "top_k"),
        ({"ef_search": 0}, "ef_search must be 1..1000, got 0", "ef_search"),
        ({"ef_search": 1001}, "ef_search must be 1..1000, got 1001", "ef_search"),
        (
            {"embedding": [1.0, 2.0]},
            f"query: embedding must have {DIMENSION} values (the configured embedding dimension), got 2",
            "query_embedding",
        ),
        ({"embedding": [0.0] * DIMENSION}, "query: embedding must not be all zeros", "query_embedding"),
        (
            {"embedding": [float("inf")] * DIMENSION},
            "query: embedding values must be finite",
            "query_embedding",
        ),
        ({"filter": FieldEquals("bad key", "x")}, "filter.field.key must be letters", "filter.field.key"),
    ],
)
async def test_invalid_searches_are_refused(
    store: ChunkStore, namespace: str, arguments: dict[str, Any], message: str, field: str
) -> None:
    call: dict[str, Any] = {"embedding": random_vector(), "top_k": 5, **arguments}
    with pytest.raises(InvalidArgument, match=re.escape(message)) as raised:
        await store.search_dense(namespace, call.pop("embedding"), call.pop("top_k"), **call)
    assert raised.value.field == field


# Health


async def test_ping_answers_while_the_schema_is_there_and_only_then(make_database: MakeDatabase) -> None:
    dsn = await make_database()
    store = await ChunkStore.connect(dsn, dimension=DIMENSION)
    conn = await asyncpg.connect(dsn)
    try:
        await store.ping()
        await conn.execute("ALTER TABLE rag_chunks RENAME TO rag_chunks_gone")

        # A database that answers without the schema is no store: ping says so.
        with pytest.raises(asyncpg.UndefinedTableError, match="rag_chunks"):
            await store.ping()
    finally:
        await conn.close()
        await store.close()


async def test_an_unreachable_database_is_unavailable() -> None:
    # Port 1 on localhost: nothing listens, the connection is refused at once.
    pool = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/postgres", min_size=0, max_size=1)
    unreachable = ChunkStore(pool, dimension=DIMENSION)
    try:
        with pytest.raises(Unavailable, match="the document store is unavailable"):
            await unreachable.ping()
        with pytest.raises(Unavailable):
            await unreachable.search_dense("ns", random_vector(), 3)
    finally:
        await unreachable.close()


# HNSW at work


@pytest.fixture(scope="module")
async def hnsw_store(make_database: MakeDatabase) -> Any:
    """A store on a database of its own whose planner must use the HNSW index.

    On a few hundred rows PostgreSQL rightly prefers an exact scan and sort;
    these settings take that choice away so the tests exercise the index.
    """
    dsn = await make_database()
    settings = {"enable_seqscan": "off", "enable_bitmapscan": "off", "enable_sort": "off"}
    chunk_store = await ChunkStore.connect(
        dsn, dimension=16, hnsw_m=8, hnsw_ef_construction=64, server_settings=settings
    )
    vectors = np.random.default_rng(7).standard_normal((400, 16)).astype(np.float32)
    documents = [
        document(f"doc{i:03}", texts=[f"text {i}"], embeddings=[vectors[i]], metadata={"bucket": i % 20})
        for i in range(len(vectors))
    ]
    await chunk_store.upsert("hnsw", documents)
    # Another namespace whose vectors are the same, to show it stays out.
    await chunk_store.upsert("hnsw-twin", documents)
    conn = await asyncpg.connect(dsn, server_settings=settings)
    await conn.execute("ANALYZE")
    yield chunk_store, vectors, conn
    await conn.close()
    await chunk_store.close()


@pytest.mark.parametrize("mode", [SearchMode.DENSE, SearchMode.HYBRID])
async def test_the_dense_leg_uses_the_hnsw_index(hnsw_store: Any, mode: SearchMode) -> None:
    _, vectors, conn = hnsw_store
    query = SearchQuery(
        "hnsw",
        mode,
        10,
        str(vectors[0].tolist()),
        "text 7",
        FieldEquals("bucket", 7),
        Fusion(),
        DEFAULT_EF_SEARCH,
    )
    sql, params = dense_leg_sql(query)
    plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql, *params))
    assert "Index Scan using rag_chunks_embedding_hnsw" in plan


async def test_a_dense_search_in_one_statement_uses_the_hnsw_index(hnsw_store: Any) -> None:
    _, vectors, conn = hnsw_store
    query = SearchQuery(
        "hnsw", SearchMode.DENSE, 10, str(vectors[0].tolist()), None, None, Fusion(), DEFAULT_EF_SEARCH
    )
    sql, params = dense_hits_sql(query)
    plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql, *params))
    assert "Index Scan using rag_chunks_embedding_hnsw" in plan


async def test_a_search_at_the_default_ef_search_runs_with_the_sessions_settings(hnsw_store: Any) -> None:
    chunk_store, _, _ = hnsw_store
    query = np.random.default_rng(99).standard_normal(16).astype(np.float32)

    # Nothing is set per search: the pool's connections start with the iterative scan on
    # (hybrid.dense_search_settings). Without it, ef_search 100 over a 5% filter finds about 5.
    hits = await chunk_store.search_dense("hnsw", query, 10, filter=FieldEquals("bucket", 7))
    assert len(hits) == 10
    assert all(h.metadata == {"bucket": 7} for h in hits)
    asked = await chunk_store.search_dense(
        "hnsw", query, 10, filter=FieldEquals("bucket", 7), ef_search=DEFAULT_EF_SEARCH + 1
    )
    assert [h.document_id for h in hits] == [h.document_id for h in asked]


async def test_a_dense_search_finding_nothing_still_reads_the_index_version(hnsw_store: Any) -> None:
    chunk_store, _, _ = hnsw_store
    written = await chunk_store.index_version("hnsw")

    searched = await chunk_store.search_at(
        "hnsw", 10, mode=SearchMode.DENSE, embedding=np.ones(16, np.float32), filter=FieldEquals("bucket", 99)
    )

    assert searched.hits == []
    assert searched.index_version == written > 0


async def test_the_keyword_leg_reads_block_headers_from_the_index_alone(hnsw_store: Any) -> None:
    _, _, conn = hnsw_store
    await conn.execute("VACUUM rag_keyword_blocks")
    plan = "\n".join(
        row[0]
        for row in await conn.fetch(
            "EXPLAIN SELECT b.lexeme, b.id, b.postings, b.max_tf, b.min_length FROM rag_keyword_blocks b"
            " WHERE b.namespace = $1 AND b.lexeme = ANY ($2::text[])",
            "hnsw",
            ["text", "7"],
        )
    )
    assert "Index Only Scan using rag_keyword_blocks_lexeme" in plan


@pytest.mark.parametrize("top_k", [1, 10, 50])
async def test_hnsw_results_match_exact_search(hnsw_store: Any, top_k: int) -> None:
    chunk_store, vectors, _ = hnsw_store
    query = np.random.default_rng(top_k).standard_normal(16).astype(np.float32)

    hits = await chunk_store.search_dense("hnsw", query, top_k, ef_search=1000)

    distances = cosine_distances(vectors, query)
    expected = np.argsort(distances)[:top_k]
    assert [h.document_id for h in hits] == [f"doc{i:03}" for i in expected]
    assert [h.score for h in hits] == pytest.approx([1.0 - distances[i] for i in expected], abs=1e-5)


async def test_a_selective_filter_still_fills_top_k(hnsw_store: Any) -> None:
    chunk_store, vectors, _ = hnsw_store
    query = np.random.default_rng(99).standard_normal(16).astype(np.float32)
    in_bucket = np.flatnonzero(np.arange(len(vectors)) % 20 == 7)  # 20 of 400 rows: 5%

    # ef_search=10 alone would find about 10 * 5% = half a match; the
    # iterative scan keeps going until top_k rows pass the filter.
    hits = await chunk_store.search_dense("hnsw", query, 10, filter=FieldEquals("bucket", 7), ef_search=10)
    assert len(hits) == 10
    assert all(h.metadata == {"bucket": 7} for h in hits)
    assert hits == sorted(hits, key=lambda h: -h.score)

    # When every matching row is asked for, all of them come, in exact order.
    hits = await chunk_store.search_dense("hnsw", query, 30, filter=FieldEquals("bucket", 7), ef_search=1000)
    order = in_bucket[np.argsort(cosine_distances(vectors[in_bucket], query))]
    assert [h.document_id for h in hits] == [f"doc{i:03}" for i in order]
