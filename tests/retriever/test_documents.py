"""Index versions, failure records, document listings and chunk pages: store and servicer."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.deferred import Deferred
from services.common.errors import InvalidArgument
from services.common.limits import EMPTY_DELETE
from services.retriever import schema
from services.retriever.filters import FieldEquals
from services.retriever.hybrid import SearchMode
from services.retriever.schema import migrate
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import ChunkStore
from services.retriever.store.records import (
    ChunkInput,
    DocumentInfo,
    DocumentInput,
    DocumentState,
    FailureInput,
    UpsertStatus,
)
from tests.retriever.conftest import DIMENSION
from tests.retriever.serving import refusal, serving, violated_field
from tests.retriever.test_store import wait_until_blocked

MakeDatabase = Callable[[], Awaitable[str]]

rng = np.random.default_rng(20240610)


def document(
    document_id: str,
    content_hash: str = "h1",
    texts: Sequence[str] = ("whales eat krill",),
    *,
    pages: Sequence[Sequence[int]] | None = None,
    metadata: dict[str, Any] | None = None,
    title: str = "",
) -> DocumentInput:
    chunk_pages = pages if pages is not None else [()] * len(texts)
    chunks = [
        ChunkInput(i, text, rng.standard_normal(DIMENSION), 0, len(text), pages=p)
        for i, (text, p) in enumerate(zip(texts, chunk_pages, strict=True))
    ]
    return DocumentInput(document_id, content_hash, title, metadata or {}, chunks)


def failure(document_id: str, reason: str = "the PDF is encrypted", title: str = "") -> FailureInput:
    return FailureInput(document_id, title, reason)


async def list_all(
    store: ChunkStore, namespace: str, state: DocumentState, page_size: int
) -> list[DocumentInfo]:
    """Every page of a listing, checking that only the last page says it is last."""
    documents: list[DocumentInfo] = []
    after = ""
    while True:
        page = await store.list_documents(namespace, state=state, page_size=page_size, after=after)
        documents += page.documents
        if page.next_after is None:
            return documents
        assert len(page.documents) == page_size, "only the last page may be short"
        after = page.next_after


def ids(documents: Sequence[DocumentInfo]) -> list[str]:
    return [d.document_id for d in documents]


@pytest.fixture
async def retriever(store: ChunkStore) -> AsyncIterator[retriever_pb2_grpc.RetrieverServiceAsyncStub]:
    deferred: Deferred[ChunkStore] = Deferred("the store")
    deferred.resolve(store)
    async with serving(RetrieverServicer(deferred)) as stub:
        yield stub


# Index version


async def test_the_version_moves_with_every_change_and_only_then(store: ChunkStore, namespace: str) -> None:
    other = f"{namespace}-other"
    assert await store.index_version(namespace) == 0, "never written"

    await store.upsert(namespace, [document("a"), document("b")])
    assert await store.index_version(namespace) == 2, "one transaction, one bump, per document"

    await store.upsert(namespace, [document("a"), document("b")])
    assert await store.index_version(namespace) == 2, "unchanged upserts change nothing"

    await store.upsert(namespace, [document("a", "h2", ["whales sing"])])
    assert await store.index_version(namespace) == 3

    await store.record_failures(namespace, [failure("a"), failure("never-stored")])
    assert await store.index_version(namespace) == 3, "a failure record is not searchable"

    assert await store.delete(namespace, ["missing", "never-stored"]) == (0, 0)
    assert await store.index_version(namespace) == 3, "a delete that removes no document changes nothing"

    assert await store.delete(namespace, ["a", "b"]) == (2, 2)
    assert await store.index_version(namespace) == 4, "one delete statement, one bump"
    assert await store.index_version(other) == 0, "other namespaces keep their own version"

    await store.upsert(namespace, [document("a", metadata={"drop": True})])
    await store.delete(namespace, filter=FieldEquals("drop", True))
    assert await store.index_version(namespace) == 6, "an emptied namespace keeps counting"


async def test_concurrent_writers_each_get_their_own_bump(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    # A reader polling while 20 documents are created concurrently: in any
    # snapshot the version must equal the documents visible, so a version is
    # never seen before its write, nor a write before its version.
    done = asyncio.Event()
    snapshots: list[tuple[int, int]] = []

    async def poll() -> None:
        while not done.is_set():
            row = await db.fetchrow(
                """
                SELECT coalesce((SELECT version FROM rag_keyword_stats WHERE namespace = $1), 0) AS version,
                       (SELECT count(*) FROM rag_documents WHERE namespace = $1) AS documents
                """,
                namespace,
            )
            snapshots.append((row["version"], row["documents"]))
            await asyncio.sleep(0)

    async def write() -> None:
        try:
            await asyncio.gather(*(store.upsert(namespace, [document(f"d{i:02}")]) for i in range(20)))
        finally:
            done.set()

    await asyncio.gather(poll(), write())

    assert await store.index_version(namespace) == 20
    assert len(set(snapshots)) > 2, "the reader saw writes in progress"
    assert [s for s in snapshots if s[0] != s[1]] == [], "(version, documents) seen out of step"

    # Updates and deletes racing in one namespace: every one that changed something counts.
    await asyncio.gather(
        *(store.upsert(namespace, [document(f"d{i:02}", "h2")]) for i in range(0, 20, 2)),
        *(store.delete(namespace, [f"d{i:02}"]) for i in range(1, 20, 4)),
        *(store.upsert(namespace, [document(f"d{i:02}")]) for i in range(3, 20, 4)),  # unchanged
    )
    assert await store.index_version(namespace) == 20 + 10 + 5


# Failure records


async def test_a_failure_is_listed_until_a_successful_upsert_clears_it(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    await store.upsert(namespace, [document("stored", title="Stored v1"), document("fine")])
    await store.record_failures(
        namespace,
        [failure("stored", "timed out", "Stored v2"), failure("new", "not a PDF", "New doc")],
    )

    failed = await list_all(store, namespace, DocumentState.FAILED, 10)
    assert ids(failed) == ["new", "stored"]
    new, stored = failed
    assert (new.title, new.chunk_count, new.content_hash, new.updated_at) == ("New doc", 0, "", None)
    assert new.failure is not None
    assert new.failure.reason == "not a PDF"
    # A stored document keeps its stored fields alongside the failure.
    assert (stored.title, stored.chunk_count, stored.content_hash) == ("Stored v1", 1, "h1")
    assert stored.updated_at is not None
    assert stored.failure is not None
    assert stored.failure.reason == "timed out"
    assert stored.failure.failed_at >= stored.updated_at

    # Recording again replaces the reason and the time.
    await store.record_failures(namespace, [failure("new", "still not a PDF")])
    (again,) = [
        d for d in await list_all(store, namespace, DocumentState.FAILED, 10) if d.document_id == "new"
    ]
    assert again.failure is not None
    assert again.failure.reason == "still not a PDF"
    assert again.failure.failed_at > new.failure.failed_at

    # Created and unchanged upserts both clear the record, in the upsert's transaction.
    outcomes = await store.upsert(namespace, [document("new"), document("stored")])
    assert [o.status for o in outcomes] == [UpsertStatus.CREATED, UpsertStatus.UNCHANGED]
    assert await list_all(store, namespace, DocumentState.FAILED, 10) == []
    assert (
        await db.fetchval("SELECT count(*) FROM rag_document_failures WHERE namespace = $1", namespace) == 0
    )

    # And so does an update.
    await store.record_failures(namespace, [failure("fine")])
    await store.upsert(namespace, [document("fine", "h2")])
    assert await list_all(store, namespace, DocumentState.FAILED, 10) == []


async def test_a_delete_clears_failure_records_by_id_and_by_filter(store: ChunkStore, namespace: str) -> None:
    await store.upsert(
        namespace, [document("red", metadata={"team": "red"}), document("blue", metadata={"team": "blue"})]
    )
    await store.record_failures(namespace, [failure("red"), failure("blue"), failure("only-failed")])

    assert await store.delete(namespace, ["only-failed"]) == (0, 0), "a failure record is no document"
    assert ids(await list_all(store, namespace, DocumentState.FAILED, 10)) == ["blue", "red"]

    assert await store.delete(namespace, filter=FieldEquals("team", "red")) == (1, 1)
    assert ids(await list_all(store, namespace, DocumentState.FAILED, 10)) == ["blue"]

    assert await store.delete(namespace, ["blue"]) == (1, 1)
    assert await list_all(store, namespace, DocumentState.ALL, 10) == []


async def test_a_delete_and_an_upsert_clearing_a_failure_do_not_deadlock(
    store: ChunkStore, store_dsn: str, namespace: str, db: asyncpg.Connection
) -> None:
    await store.upsert(namespace, [document("a")])
    await store.record_failures(namespace, [failure("x")])
    upsert = await asyncpg.connect(store_dsn)
    try:
        # What an upsert creating "x" does: clear its failure record, ...
        async with upsert.transaction():
            await upsert.execute(
                "DELETE FROM rag_document_failures WHERE namespace = $1 AND document_id = 'x'", namespace
            )
            delete = asyncio.create_task(store.delete(namespace, ["a", "x"]))
            await wait_until_blocked(db, "%DELETE FROM rag_documents d%")
            # ... then, last, update the statistics row: the waiting delete
            # must not hold it, or PostgreSQL aborts one of the two.
            await upsert.execute(
                "UPDATE rag_keyword_stats SET version = version + 1 WHERE namespace = $1", namespace
            )
        assert await delete == (1, 1)
    finally:
        await upsert.close()
    assert await store.index_version(namespace) == 3
    assert await list_all(store, namespace, DocumentState.ALL, 10) == []


async def test_failure_records_stay_in_their_namespace(store: ChunkStore, namespace: str) -> None:
    other = f"{namespace}-other"
    await store.record_failures(namespace, [failure("doc")])
    await store.upsert(other, [document("doc")])
    await store.delete(other, ["doc"])

    assert ids(await list_all(store, namespace, DocumentState.FAILED, 10)) == ["doc"]
    assert await list_all(store, other, DocumentState.ALL, 10) == []


@pytest.mark.parametrize(
    ("bad", "message", "field"),
    [
        (failure(" "), "documents[1].document_id must not be empty or blank", "documents[1].document_id"),
        (failure("good"), "document 'good' appears more than once", "documents[1].document_id"),
        (failure("a", ""), "documents[1].reason must not be empty or blank", "documents[1].reason"),
        (
            failure("a", "x" * 2001),
            "documents[1].reason must be at most 2000 characters, got 2001",
            "documents[1].reason",
        ),
        (failure("a", "nul\x00"), "documents[1].reason must not contain NUL", "documents[1].reason"),
        (failure("a", title="nul\x00"), "documents[1].title must not contain NUL", "documents[1].title"),
    ],
)
async def test_bad_failure_records_are_refused_before_any_is_written(
    store: ChunkStore, namespace: str, bad: FailureInput, message: str, field: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as raised:
        await store.record_failures(namespace, [failure("good"), bad])
    assert raised.value.field == field
    assert await list_all(store, namespace, DocumentState.ALL, 10) == []


async def test_a_reason_of_exactly_the_limit_is_kept_whole(store: ChunkStore, namespace: str) -> None:
    await store.record_failures(namespace, [failure("a", "é" * 2000)])
    (listed,) = await list_all(store, namespace, DocumentState.FAILED, 10)
    assert listed.failure is not None
    assert listed.failure.reason == "é" * 2000


# Listing


async def test_listings_page_through_every_state_in_id_order(store: ChunkStore, namespace: str) -> None:
    stored = [f"doc-{i:02}" for i in range(0, 23)]
    failed_only = [f"doc-{i:02}.failed" for i in range(0, 23, 5)]
    failed_stored = stored[3::4]
    await store.upsert(namespace, [document(i, texts=["a", "b"]) for i in reversed(stored)])
    await store.record_failures(namespace, [failure(i) for i in failed_only + failed_stored])

    for page_size in (1, 4, 7, 100):
        indexed = await list_all(store, namespace, DocumentState.INDEXED, page_size)
        assert ids(indexed) == stored
        assert {d.document_id for d in indexed if d.failure is not None} == set(failed_stored)
        assert all(d.chunk_count == 2 and d.content_hash == "h1" and d.updated_at for d in indexed)

        failed = await list_all(store, namespace, DocumentState.FAILED, page_size)
        assert ids(failed) == sorted(failed_only + failed_stored)
        assert all(d.failure is not None for d in failed)

        every = await list_all(store, namespace, DocumentState.ALL, page_size)
        assert ids(every) == sorted(stored + failed_only)
        assert every == sorted(
            indexed + [d for d in failed if d.updated_at is None], key=lambda d: d.document_id
        )


async def test_a_page_that_ends_the_listing_says_so(store: ChunkStore, namespace: str) -> None:
    await store.upsert(namespace, [document(f"d{i}") for i in range(6)])

    first = await store.list_documents(namespace, page_size=3)
    assert (ids(first.documents), first.next_after) == (["d0", "d1", "d2"], "d2")
    second = await store.list_documents(namespace, page_size=3, after="d2")
    # Exactly six documents: no empty third page.
    assert (ids(second.documents), second.next_after) == (["d3", "d4", "d5"], None)
    # A listing resumes after any id, listed or not (e.g. deleted since).
    resumed = await store.list_documents(namespace, page_size=3, after="d30")
    assert ids(resumed.documents) == ["d4", "d5"]
    assert (await store.list_documents(f"{namespace}-empty")).documents == []


async def test_updated_at_moves_on_update_only(store: ChunkStore, namespace: str) -> None:
    await store.upsert(namespace, [document("doc")])
    (created,) = (await store.list_documents(namespace)).documents
    await store.upsert(namespace, [document("doc")])
    (unchanged,) = (await store.list_documents(namespace)).documents
    await store.upsert(namespace, [document("doc", "h2")])
    (updated,) = (await store.list_documents(namespace)).documents

    assert created.updated_at is not None
    assert updated.updated_at is not None
    assert unchanged.updated_at == created.updated_at
    assert updated.updated_at > created.updated_at
    assert updated.content_hash == "h2"


@pytest.mark.parametrize(
    ("arguments", "message", "field"),
    [
        ({"page_size": 0}, "page_size must be 1..1000, got 0", "page_size"),
        ({"page_size": 1001}, "page_size must be 1..1000, got 1001", "page_size"),
        ({"after": "nul\x00"}, "after must not contain NUL", "after"),
    ],
)
async def test_bad_listings_are_refused(
    store: ChunkStore, namespace: str, arguments: dict[str, Any], message: str, field: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as raised:
        await store.list_documents(namespace, **arguments)
    assert raised.value.field == field


# Pages


@pytest.mark.parametrize("mode", list(SearchMode))
async def test_pages_come_back_with_every_hit(store: ChunkStore, namespace: str, mode: SearchMode) -> None:
    await store.upsert(
        namespace,
        [
            document("pdf", texts=["whales on page one", "whales over pages 2-3"], pages=[[1], [2, 3]]),
            document("html", texts=["whales without pages"]),
        ],
    )

    hits = await store.search(
        namespace, 10, mode=mode, embedding=rng.standard_normal(DIMENSION), text="whales"
    )

    assert {(h.document_id, h.chunk_index): h.pages for h in hits} == {
        ("pdf", 0): (1,),
        ("pdf", 1): (2, 3),
        ("html", 0): (),
    }


@pytest.mark.parametrize(
    ("pages", "message"),
    [
        ([0], "pages must be 1-based page numbers in increasing order, got [0]"),
        ([2, 1], "pages must be 1-based page numbers in increasing order, got [2, 1]"),
        ([3, 3], "pages must be 1-based page numbers in increasing order, got [3, 3]"),
        ([2**31], "pages must be 1-based page numbers in increasing order"),
        ([1.5], "pages must be whole numbers"),
    ],
)
async def test_bad_pages_are_refused(
    store: ChunkStore, namespace: str, pages: list[Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as raised:
        await store.upsert(namespace, [document("doc", pages=[pages])])
    assert raised.value.field == "documents[0].chunks[0].pages"


# Migration


async def test_an_existing_database_upgrades_in_place(
    make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = await make_database()
    conn = await asyncpg.connect(dsn)
    try:
        with monkeypatch.context() as before_documents_api:
            before_documents_api.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:2])
            await migrate(conn, dimension=DIMENSION, hnsw_m=16, hnsw_ef_construction=64)
        await conn.execute(
            "INSERT INTO rag_documents (namespace, document_id, content_hash, chunk_count)"
            " VALUES ('ns', 'old', 'h', 1)"
        )
        await conn.execute(
            """
            INSERT INTO rag_chunks
                (namespace, document_id, chunk_index, text, metadata, content_hash, embedding)
            VALUES ('ns', 'old', 0, 'whales before pages', '{}', 'h', array_fill(1, ARRAY[$1::int])::vector)
            """,
            DIMENSION,
        )
        await conn.execute(
            "INSERT INTO rag_keyword_stats (namespace, chunks, total_length) VALUES ('ns', 1, 3)"
        )

        store = await ChunkStore.connect(dsn, dimension=DIMENSION)
        try:
            assert await store.index_version("ns") == 1, "written before versions: not 'never written'"
            (hit,) = await store.search_dense("ns", np.ones(DIMENSION), 5)
            assert hit.pages == ()
            (listed,) = (await store.list_documents("ns")).documents
            assert (listed.document_id, listed.updated_at is not None, listed.failure) == ("old", True, None)

            await store.upsert("ns", [document("new", pages=[[4]])])
            await store.record_failures("ns", [failure("old")])
            assert await store.index_version("ns") == 2
            assert ids((await store.list_documents("ns", state=DocumentState.FAILED)).documents) == ["old"]
        finally:
            await store.close()
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM rag_schema_migrations")]
        assert sorted(versions) == [m.version for m in schema.MIGRATIONS]
        # Start-up again finds nothing left to do.
        await migrate(conn, dimension=DIMENSION, hnsw_m=16, hnsw_ef_construction=64)
    finally:
        await conn.close()


# Through the servicer


async def test_rpcs_round_trip(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub, namespace: str
) -> None:
    chunk = retriever_pb2.ChunkRecord(
        index=0,
        text="whales on pages three and four",
        embedding=rng.standard_normal(DIMENSION).tolist(),
        end_char=30,
        pages=[3, 4],
    )
    upsert = retriever_pb2.UpsertRequest(
        namespace=namespace,
        documents=[
            retriever_pb2.DocumentRecord(
                document_id=f"d{i}",
                content_hash="h",
                title=f"T{i}",
                metadata=struct_pb2.Struct(),
                chunks=[chunk],
            )
            for i in range(5)
        ],
    )
    await retriever.Upsert(upsert)
    await retriever.RecordFailures(
        retriever_pb2.RecordFailuresRequest(
            namespace=namespace,
            documents=[
                retriever_pb2.FailedDocument(document_id="d1", title="T1 v2", reason="OCR failed"),
                retriever_pb2.FailedDocument(document_id="e", title="E", reason="empty file"),
            ],
        )
    )

    version = await retriever.GetIndexVersion(retriever_pb2.GetIndexVersionRequest(namespace=namespace))
    assert version.version == 5

    search = retriever_pb2.SearchRequest(
        namespace=namespace, query_text="whales", top_k=10, mode=common_pb2.SEARCH_MODE_KEYWORD
    )
    hits = (await retriever.Search(search)).hits
    assert len(hits) == 5
    assert all(list(hit.pages) == [3, 4] for hit in hits)

    listed: list[retriever_pb2.DocumentInfo] = []
    token = ""
    while True:
        page = await retriever.ListDocuments(
            retriever_pb2.ListDocumentsRequest(namespace=namespace, page_size=2, page_token=token)
        )
        assert len(page.documents) == 2 or not page.next_page_token
        listed += page.documents
        token = page.next_page_token
        if not token:
            break
    assert [d.document_id for d in listed] == ["d0", "d1", "d2", "d3", "d4", "e"]
    d1, e = listed[1], listed[5]
    assert (d1.title, d1.chunk_count, d1.content_hash, d1.failure.reason) == ("T1", 1, "h", "OCR failed")
    assert d1.HasField("updated_at")
    assert d1.failure.failed_at.ToDatetime() >= d1.updated_at.ToDatetime()
    assert (e.title, e.chunk_count, e.content_hash, e.failure.reason) == ("E", 0, "", "empty file")
    assert not e.HasField("updated_at")
    assert not listed[0].HasField("failure")

    failed = await retriever.ListDocuments(
        retriever_pb2.ListDocumentsRequest(namespace=namespace, state=retriever_pb2.DOCUMENT_STATE_FAILED)
    )
    assert [d.document_id for d in failed.documents] == ["d1", "e"]
    assert failed.next_page_token == ""
    indexed = await retriever.ListDocuments(
        retriever_pb2.ListDocumentsRequest(namespace=namespace, state=retriever_pb2.DOCUMENT_STATE_INDEXED)
    )
    assert [d.document_id for d in indexed.documents] == ["d0", "d1", "d2", "d3", "d4"]


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("request_", "message", "field"),
    [
        (
            retriever_pb2.GetIndexVersionRequest(namespace="Bad Namespace"),
            "namespace must be lower-case letters",
            "namespace",
        ),
        (
            retriever_pb2.ListDocumentsRequest(namespace="ns", page_size=-1),
            "page_size must be 1..1000",
            "page_size",
        ),
        (
            retriever_pb2.ListDocumentsRequest(namespace="ns", page_size=1001),
            "page_size must be 1..1000, got 1001",
            "page_size",
        ),
        (
            retriever_pb2.ListDocumentsRequest(
                namespace="ns", state=retriever_pb2.DocumentState.ValueType(7)
            ),
            "state must be one of DOCUMENT_STATE_UNSPECIFIED, DOCUMENT_STATE_INDEXED, DOCUMENT_STATE_FAILED",
            "state",
        ),
        *(
            (
                retriever_pb2.ListDocumentsRequest(namespace="ns", page_token=token),
                "page_token is not one this service issued",
                "page_token",
            )
            for token in ["not base64!", "a+b/", "abcde", _token(b"\xff\xfe"), _token(b"\x00"), _token(b" ")]
        ),
        (
            retriever_pb2.RecordFailuresRequest(namespace="ns"),
            "documents (count) must be 1..1000, got 0",
            "documents (count)",
        ),
        (
            retriever_pb2.RecordFailuresRequest(
                namespace="ns",
                documents=[
                    retriever_pb2.FailedDocument(document_id=f"d{i}", reason="r") for i in range(1001)
                ],
            ),
            "documents (count) must be 1..1000, got 1001",
            "documents (count)",
        ),
        (
            retriever_pb2.RecordFailuresRequest(
                namespace="ns", documents=[retriever_pb2.FailedDocument(document_id="x" * 257, reason="r")]
            ),
            "documents[0].document_id must be at most 256 characters, got 257",
            "documents[0].document_id",
        ),
        (
            retriever_pb2.RecordFailuresRequest(
                namespace="ns", documents=[retriever_pb2.FailedDocument(document_id="d", reason="r" * 2001)]
            ),
            "documents[0].reason must be at most 2000 characters, got 2001",
            "documents[0].reason",
        ),
        (retriever_pb2.DeleteRequest(namespace="ns"), EMPTY_DELETE, "document_ids"),
        (
            retriever_pb2.DeleteRequest(namespace="ns", document_ids=["ok", " "]),
            "document_ids[1] must not be empty or blank",
            "document_ids[1]",
        ),
        (
            retriever_pb2.GetDocumentHashesRequest(namespace="ns", document_ids=["ok", "x" * 257]),
            "document_ids[1] must be at most 256 characters, got 257",
            "document_ids[1]",
        ),
        (
            retriever_pb2.GetDocumentHashesRequest(namespace="ns", document_ids=["d"] * 10_001),
            "document_ids (count) must be 0..10000, got 10001",
            "document_ids (count)",
        ),
    ],
)
async def test_bad_requests_are_invalid_arguments(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub, request_: Any, message: str, field: str
) -> None:
    methods: dict[type, Callable[..., Awaitable[Any]]] = {
        retriever_pb2.GetIndexVersionRequest: retriever.GetIndexVersion,
        retriever_pb2.ListDocumentsRequest: retriever.ListDocuments,
        retriever_pb2.RecordFailuresRequest: retriever.RecordFailures,
        retriever_pb2.DeleteRequest: retriever.Delete,
        retriever_pb2.GetDocumentHashesRequest: retriever.GetDocumentHashes,
    }
    error = await refusal(methods[type(request_)](request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert message in (error.details() or "")
    assert violated_field(error) == field


async def test_bad_pages_through_the_servicer_are_invalid_arguments(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub, namespace: str
) -> None:
    chunk = retriever_pb2.ChunkRecord(text="x", embedding=[1.0] * DIMENSION, end_char=1, pages=[2, 1])
    upsert = retriever_pb2.UpsertRequest(
        namespace=namespace,
        documents=[retriever_pb2.DocumentRecord(document_id="d", content_hash="h", chunks=[chunk])],
    )
    error = await refusal(retriever.Upsert(upsert), grpc.StatusCode.INVALID_ARGUMENT)
    assert "document 'd' chunk 0: pages must be 1-based" in (error.details() or "")
    assert violated_field(error) == "documents[0].chunks[0].pages"
