"""ChunkStore: documents, their chunks and embeddings in PostgreSQL with pgvector.

Plain async Python over an asyncpg pool, testable without gRPC. Every method
is scoped to one namespace; no query reads or writes another. Caller input is
checked here and refused with InvalidArgument before any SQL runs; a database
that cannot be reached surfaces as Unavailable.

Searches run dense (HNSW, cosine), keyword (BM25, see keyword.py) or hybrid
(both, fused by reciprocal rank fusion, see hybrid.py), each as one statement.

Each namespace has an index version, bumped by every write that changes what a
search can find, in that write's transaction (see keyword.py), and failure
records of documents whose ingestion failed, cleared by the document's next
successful upsert or its delete.
"""

from __future__ import annotations

import enum
import json
import operator
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import numpy as np
import numpy.typing as npt
from pgvector.asyncpg import register_vector

from services.common.errors import InvalidArgument, Unavailable
from services.common.validation import require_namespace, require_range, require_text
from services.retriever.filters import Filter, compile_filter
from services.retriever.hybrid import (
    DENSE_SEARCH_SETTINGS_SQL,
    Fusion,
    SearchMode,
    SearchQuery,
    require_fusion,
    search_sql,
)
from services.retriever.keyword import DELETE_DOCUMENTS_SQL, INDEX_DOCUMENT_SQL, Bm25, require_query_text
from services.retriever.schema import MAX_INDEXED_DIMENSION, migrate

MAX_TOP_K = 100
MAX_EF_SEARCH = 1000
MAX_DOCUMENT_ID_CHARS = 512
MAX_CONTENT_HASH_CHARS = 256
MAX_FAILURE_REASON_CHARS = 2000
MAX_PAGE_SIZE = 1000
_INT32_MAX = 2**31 - 1

Embedding: TypeAlias = Sequence[float] | npt.NDArray[np.floating[Any]]
"""A list of floats or a 1-d numpy array, as the embedder hands them over."""


@dataclass(frozen=True, slots=True)
class ChunkInput:
    index: int
    text: str
    embedding: Embedding
    start_char: int
    end_char: int
    # 1-based pages of the source file the chunk spans, increasing; empty when the source has none.
    pages: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class DocumentInput:
    document_id: str
    # Hash of the content the chunks were made from; an equal stored hash means nothing to write.
    content_hash: str
    title: str
    metadata: Mapping[str, Any]
    chunks: Sequence[ChunkInput]


class UpsertStatus(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class UpsertOutcome:
    document_id: str
    status: UpsertStatus
    chunk_count: int


@dataclass(frozen=True, slots=True)
class LegScore:
    """Where a hit stood in one leg of the search: 1-based rank and that leg's score."""

    rank: int
    score: float


@dataclass(frozen=True, slots=True)
class Hit:
    document_id: str
    chunk_index: int
    text: str
    title: str
    metadata: dict[str, Any]
    score: float
    dense: LegScore | None
    keyword: LegScore | None
    pages: tuple[int, ...]
    # Set when the cross-encoder reordered the hits; score then equals it.
    rerank_score: float | None = None


@dataclass(frozen=True, slots=True)
class StoredDocument:
    document_id: str
    content_hash: str
    chunk_count: int


@dataclass(frozen=True, slots=True)
class FailureInput:
    """A document whose ingestion failed, and why: shown to whoever lists failed documents."""

    document_id: str
    title: str
    reason: str


class DocumentState(enum.Enum):
    """Which documents a listing shows."""

    ALL = "all"
    # Stored, searchable.
    INDEXED = "indexed"
    # With a failure record (an older version may still be stored).
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DocumentFailure:
    reason: str
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    document_id: str
    # The stored title, else the one the failure was recorded with.
    title: str
    # 0, "" and None when the document is not stored, only failed.
    chunk_count: int
    content_hash: str
    updated_at: datetime | None
    failure: DocumentFailure | None


@dataclass(frozen=True, slots=True)
class DocumentPage:
    documents: list[DocumentInfo]
    # The last document id of this page when more follow, to pass as `after`; None on the last page.
    next_after: str | None


# Errors meaning the database is out of reach rather than the request wrong.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)

_LOCK_DOCUMENT_SQL = """
SELECT content_hash, chunk_count, keyword_length FROM rag_documents
WHERE namespace = $1 AND document_id = $2
FOR UPDATE
"""

_INSERT_DOCUMENT_SQL = """
INSERT INTO rag_documents (namespace, document_id, content_hash, title, metadata, chunk_count)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (namespace, document_id) DO NOTHING
RETURNING true
"""

_UPDATE_DOCUMENT_SQL = """
UPDATE rag_documents
SET content_hash = $3, title = $4, metadata = $5, chunk_count = $6, updated_at = now()
WHERE namespace = $1 AND document_id = $2
"""

# A successful upsert or a delete of the document settles its last failure.
_CLEAR_FAILURE_SQL = "DELETE FROM rag_document_failures WHERE namespace = $1 AND document_id = $2"

# One statement for the whole batch. Rows are written, and so locked, in
# document id order under the database's collation, as Delete locks them
# (keyword.py), so the two cannot deadlock. now() is the transaction's start.
_RECORD_FAILURES_SQL = """
INSERT INTO rag_document_failures AS f (namespace, document_id, title, reason, failed_at)
SELECT $1, u.document_id, u.title, u.reason, now()
FROM unnest($2::text[], $3::text[], $4::text[]) AS u (document_id, title, reason)
ORDER BY u.document_id
ON CONFLICT (namespace, document_id) DO UPDATE
SET title = excluded.title, reason = excluded.reason, failed_at = excluded.failed_at
"""

# Keyset pagination: $2 is the last id of the previous page ('' sorts before
# any id), $3 the page size plus one, to tell whether another page follows.
# Ids sort by the database's collation, the order of the primary keys' indexes,
# so each page reads one index range and never skips rows the way OFFSET would.
_LIST_COLUMNS = """
SELECT document_id, coalesce(d.title, f.title) AS title, coalesce(d.chunk_count, 0) AS chunk_count,
       coalesce(d.content_hash, '') AS content_hash, d.updated_at, f.reason, f.failed_at
FROM """

# Every id that is stored or failed. Each side reads at most its first $3 ids:
# an id among the first $3 of the union is among the first $3 of each side
# that holds it.
_LIST_SOURCES = {
    DocumentState.ALL: """(
    SELECT document_id, title, chunk_count, content_hash, updated_at FROM rag_documents
    WHERE namespace = $1 AND document_id > $2 ORDER BY document_id LIMIT $3
) d FULL JOIN (
    SELECT document_id, title, reason, failed_at FROM rag_document_failures
    WHERE namespace = $1 AND document_id > $2 ORDER BY document_id LIMIT $3
) f USING (document_id)
ORDER BY document_id""",
    DocumentState.INDEXED: """rag_documents d LEFT JOIN rag_document_failures f USING (namespace, document_id)
WHERE d.namespace = $1 AND d.document_id > $2
ORDER BY d.document_id""",
    DocumentState.FAILED: """rag_document_failures f LEFT JOIN rag_documents d USING (namespace, document_id)
WHERE f.namespace = $1 AND f.document_id > $2
ORDER BY f.document_id""",
}

_CHUNK_COLUMNS = (
    "namespace",
    "document_id",
    "chunk_index",
    "text",
    "start_char",
    "end_char",
    "pages",
    "metadata",
    "content_hash",
    "embedding",
)

# index, text, start_char, end_char, pages, embedding: validated, in _CHUNK_COLUMNS' order.
_PreparedChunk: TypeAlias = tuple[int, str, int, int, list[int], npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class _PreparedDocument:
    """A validated document, ready to write."""

    document_id: str
    content_hash: str
    title: str
    metadata: dict[str, Any]
    chunks: list[_PreparedChunk]


class ChunkStore:
    """Documents and chunks of every namespace, with dense, keyword and hybrid search.

    The store owns `pool` and closes it in `close()`. Use `connect()` to build
    one: it migrates the schema and registers the codecs the store relies on.
    `text_search_config` must be the one the schema was migrated with.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        dimension: int,
        default_ef_search: int = 40,
        text_search_config: str = "english",
        bm25: Bm25 | None = None,
        default_fusion: Fusion | None = None,
    ) -> None:
        if not 1 <= dimension <= MAX_INDEXED_DIMENSION:
            raise ValueError(f"dimension must be 1..{MAX_INDEXED_DIMENSION}, got {dimension}")
        if not 1 <= default_ef_search <= MAX_EF_SEARCH:
            raise ValueError(f"default_ef_search must be 1..{MAX_EF_SEARCH}, got {default_ef_search}")
        default_fusion = default_fusion or Fusion()
        try:
            require_fusion(default_fusion, "default_fusion")
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        self._pool = pool
        self._dimension = dimension
        self._default_ef_search = default_ef_search
        self._text_search_config = text_search_config
        self._bm25 = bm25 or Bm25()
        self._default_fusion = default_fusion

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        dimension: int,
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 64,
        default_ef_search: int = 40,
        text_search_config: str = "english",
        bm25: Bm25 | None = None,
        default_fusion: Fusion | None = None,
        min_pool_size: int = 1,
        max_pool_size: int = 10,
        server_settings: Mapping[str, str] | None = None,
    ) -> ChunkStore:
        """Migrate the schema, then open a pool whose connections speak `vector` and `jsonb`.

        `server_settings` adds session settings for every connection (e.g.
        statement_timeout). The time zone is UTC unless overridden, so
        time-range filters read offset-less metadata timestamps as UTC.
        RuntimeError when the database cannot hold what the settings ask for:
        another embedding dimension, or a text search configuration it does
        not have or did not build the keyword index with.
        """
        settings = {"timezone": "UTC", "application_name": "rag-retriever", **(server_settings or {})}
        # The vector type must exist before a connection can register its
        # codec, so the migration runs on a plain connection first.
        conn = await asyncpg.connect(dsn, server_settings=settings)
        try:
            await migrate(
                conn,
                dimension=dimension,
                hnsw_m=hnsw_m,
                hnsw_ef_construction=hnsw_ef_construction,
                text_search_config=text_search_config,
            )
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_pool_size,
            max_size=max_pool_size,
            init=_init_connection,
            server_settings=settings,
        )
        return cls(
            pool,
            dimension=dimension,
            default_ef_search=default_ef_search,
            text_search_config=text_search_config,
            bm25=bm25,
            default_fusion=default_fusion,
        )

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def default_fusion(self) -> Fusion:
        """Fusion settings a hybrid search uses when it is given none."""
        return self._default_fusion

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        """Raise Unavailable unless the database answers and holds the schema."""
        async with self._connection() as conn:
            await conn.execute("SELECT 1 FROM rag_chunks LIMIT 0")

    async def upsert(self, namespace: str, documents: Sequence[DocumentInput]) -> list[UpsertOutcome]:
        """Store each document whole, or leave its previous version as it was.

        Every document is validated before any is written. Each is then written
        in its own transaction, so a failure part-way through a batch keeps the
        documents before it (a retry reports them UNCHANGED).
        """
        require_namespace(namespace)
        prepared = self._prepare_documents(documents)
        if not prepared:
            return []
        outcomes: list[UpsertOutcome] = []
        async with self._connection() as conn:
            for document in prepared:
                outcomes.append(await _upsert_document(conn, namespace, document, self._text_search_config))
        return outcomes

    async def delete(
        self, namespace: str, document_ids: Sequence[str] = (), filter: Filter | None = None
    ) -> tuple[int, int]:
        """Delete the listed documents and those whose metadata match `filter`.

        Returns (documents, chunks) deleted. The failure records of the listed
        ids (stored or not) and of the documents deleted go too. With neither
        ids nor filter, InvalidArgument: an empty selection is more likely a
        bug than a wish.
        """
        require_namespace(namespace)
        if not document_ids and filter is None:
            raise InvalidArgument("delete needs document_ids, a filter, or both", field="document_ids")
        ids = _require_document_ids(document_ids)
        params: list[object] = [namespace, ids]
        selection = "d.document_id = ANY($2::text[])"
        if filter is not None:
            selection += " OR " + compile_filter(filter, params, "d.metadata")
        async with self._connection() as conn:
            row = await conn.fetchrow(DELETE_DOCUMENTS_SQL.format(selection=selection), *params)
        return int(row["documents"]), int(row["chunks"])

    async def search(
        self,
        namespace: str,
        top_k: int,
        *,
        mode: SearchMode = SearchMode.HYBRID,
        embedding: Embedding | None = None,
        text: str | None = None,
        filter: Filter | None = None,
        ef_search: int | None = None,
        fusion: Fusion | None = None,
    ) -> list[Hit]:
        """The top_k chunks for the query, best first.

        DENSE ranks by cosine similarity to `embedding` (score = 1 - distance),
        KEYWORD by BM25 over `text`, HYBRID fuses both (see hybrid.py; `fusion`
        unset takes the store's defaults). Each hit carries its rank and score
        in each leg that found it. `filter` applies to every leg.
        """
        require_namespace(namespace)
        require_range(top_k, "top_k", 1, MAX_TOP_K)
        if ef_search is None:
            ef_search = self._default_ef_search
        require_range(ef_search, "ef_search", 1, MAX_EF_SEARCH)
        query = SearchQuery(
            namespace=namespace,
            mode=mode,
            top_k=top_k,
            embedding=None if mode is SearchMode.KEYWORD else self._query_embedding(embedding, mode),
            text=None if mode is SearchMode.DENSE else require_query_text(text, mode.value),
            filter=filter,
            fusion=require_fusion(fusion or self._default_fusion),
        )
        sql, params = search_sql(query, self._text_search_config, self._bm25)
        async with self._connection() as conn:
            if mode is SearchMode.KEYWORD:
                rows = await conn.fetch(sql, *params)
            else:
                async with conn.transaction(readonly=True):
                    await conn.execute(DENSE_SEARCH_SETTINGS_SQL, str(ef_search))
                    rows = await conn.fetch(sql, *params)
        return [_hit(row) for row in rows]

    async def search_dense(
        self,
        namespace: str,
        embedding: Embedding,
        top_k: int,
        *,
        filter: Filter | None = None,
        ef_search: int | None = None,
    ) -> list[Hit]:
        """The top_k chunks nearest to `embedding` by cosine distance; score = 1 - distance."""
        return await self.search(
            namespace, top_k, mode=SearchMode.DENSE, embedding=embedding, filter=filter, ef_search=ef_search
        )

    async def search_keyword(
        self, namespace: str, text: str, top_k: int, *, filter: Filter | None = None
    ) -> list[Hit]:
        """The top_k chunks by BM25 score for `text`."""
        return await self.search(namespace, top_k, mode=SearchMode.KEYWORD, text=text, filter=filter)

    async def stored_documents(self, namespace: str, document_ids: Sequence[str]) -> list[StoredDocument]:
        """What is stored for these ids, in the order asked; ids not stored are absent."""
        require_namespace(namespace)
        ids = _require_document_ids(document_ids)
        if not ids:
            return []
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT document_id, content_hash, chunk_count FROM rag_documents"
                " WHERE namespace = $1 AND document_id = ANY($2::text[])",
                namespace,
                ids,
            )
        stored = {
            row["document_id"]: StoredDocument(row["document_id"], row["content_hash"], row["chunk_count"])
            for row in rows
        }
        return [stored[i] for i in dict.fromkeys(ids) if i in stored]

    async def content_hashes(self, namespace: str, document_ids: Sequence[str]) -> dict[str, str]:
        """Stored content hash by document id; ids not stored are absent."""
        return {d.document_id: d.content_hash for d in await self.stored_documents(namespace, document_ids)}

    async def index_version(self, namespace: str) -> int:
        """The namespace's index version; 0 if it was never written.

        One more for every upsert that created or updated a document and every
        delete that removed one, committed in the same transaction.
        """
        require_namespace(namespace)
        async with self._connection() as conn:
            version = await conn.fetchval(
                "SELECT version FROM rag_keyword_stats WHERE namespace = $1", namespace
            )
        return 0 if version is None else int(version)

    async def record_failures(self, namespace: str, failures: Sequence[FailureInput]) -> None:
        """Record (or replace) each document's failure, stamped now.

        A stored version of the document stays as it was and the index version
        does not move: nothing a search can find has changed.
        """
        require_namespace(namespace)
        prepared = _prepare_failures(failures)
        if not prepared:
            return
        async with self._connection() as conn:
            await conn.execute(
                _RECORD_FAILURES_SQL,
                namespace,
                [f.document_id for f in prepared],
                [f.title for f in prepared],
                [f.reason for f in prepared],
            )

    async def list_documents(
        self,
        namespace: str,
        *,
        state: DocumentState = DocumentState.ALL,
        page_size: int = 100,
        after: str = "",
    ) -> DocumentPage:
        """Up to page_size documents in `state` whose ids sort after `after`, ordered by id.

        A stored document with a failure record shows both its stored fields
        and the failure, in every state that lists it.
        """
        require_namespace(namespace)
        require_range(page_size, "page_size", 1, MAX_PAGE_SIZE)
        if "\x00" in after:
            raise InvalidArgument("after must not contain NUL characters", field="after")
        async with self._connection() as conn:
            rows = await conn.fetch(
                _LIST_COLUMNS + _LIST_SOURCES[state] + "\nLIMIT $3", namespace, after, page_size + 1
            )
        documents = [_document_info(row) for row in rows[:page_size]]
        more = len(rows) > page_size
        return DocumentPage(documents, documents[-1].document_id if more else None)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        with _unavailable_on_connection_errors():
            async with self._pool.acquire() as conn:
                yield conn

    def _query_embedding(self, embedding: Embedding | None, mode: SearchMode) -> npt.NDArray[np.float32]:
        if embedding is None or len(embedding) == 0:
            raise InvalidArgument(
                f"query_embedding is needed in {mode.value} mode; keyword mode ranks by query_text alone",
                field="query_embedding",
            )
        return self._embedding(embedding, "query_embedding", "query")

    # Validation: everything is checked before anything is written.

    def _prepare_documents(self, documents: Sequence[DocumentInput]) -> list[_PreparedDocument]:
        prepared: list[_PreparedDocument] = []
        seen: set[str] = set()
        for i, document in enumerate(documents):
            item = self._prepare_document(document, f"documents[{i}]")
            if item.document_id in seen:
                raise InvalidArgument(
                    f"document {item.document_id!r:.80} appears more than once in one upsert",
                    field=f"documents[{i}].document_id",
                )
            seen.add(item.document_id)
            prepared.append(item)
        return prepared

    def _prepare_document(self, document: DocumentInput, field: str) -> _PreparedDocument:
        document_id = _require_plain_text(
            document.document_id, f"{field}.document_id", max_chars=MAX_DOCUMENT_ID_CHARS
        )
        what = f"document {document_id!r:.80}"
        content_hash = _require_plain_text(
            document.content_hash, f"{field}.content_hash", max_chars=MAX_CONTENT_HASH_CHARS
        )
        if "\x00" in document.title:
            raise InvalidArgument(f"{what}: title must not contain NUL characters", field=f"{field}.title")
        if not document.chunks:
            raise InvalidArgument(f"{what}: needs at least one chunk", field=f"{field}.chunks")
        chunks = []
        indexes: set[int] = set()
        for j, chunk in enumerate(document.chunks):
            chunk_field = f"{field}.chunks[{j}]"
            if not 0 <= chunk.index <= _INT32_MAX:
                raise InvalidArgument(
                    f"{what}: chunk index must be 0..{_INT32_MAX}, got {chunk.index}",
                    field=f"{chunk_field}.index",
                )
            if chunk.index in indexes:
                raise InvalidArgument(
                    f"{what}: chunk index {chunk.index} appears more than once", field=f"{chunk_field}.index"
                )
            indexes.add(chunk.index)
            chunks.append(self._prepare_chunk(chunk, chunk_field, f"{what} chunk {chunk.index}"))
        metadata = _require_metadata(document.metadata, f"{field}.metadata", what)
        return _PreparedDocument(document_id, content_hash, document.title, metadata, chunks)

    def _prepare_chunk(self, chunk: ChunkInput, field: str, what: str) -> _PreparedChunk:
        if "\x00" in chunk.text:
            raise InvalidArgument(f"{what}: text must not contain NUL characters", field=f"{field}.text")
        if not 0 <= chunk.start_char <= chunk.end_char <= _INT32_MAX:
            raise InvalidArgument(
                f"{what}: start_char and end_char must satisfy 0 <= start_char <= end_char, "
                f"got {chunk.start_char} and {chunk.end_char}",
                field=f"{field}.start_char",
            )
        pages = _require_pages(chunk.pages, f"{field}.pages", what)
        embedding = self._embedding(chunk.embedding, f"{field}.embedding", what)
        return chunk.index, chunk.text, chunk.start_char, chunk.end_char, pages, embedding

    def _embedding(self, value: Embedding, field: str, what: str) -> npt.NDArray[np.float32]:
        """`value` as float32, with the configured dimension, finite and not all zeros."""
        try:
            # Values beyond float32's range become inf here and are refused below.
            with np.errstate(over="ignore"):
                array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{what}: embedding must be a list of numbers", field=field) from None
        if array.ndim != 1 or array.shape[0] != self._dimension:
            got = array.shape[0] if array.ndim == 1 else f"shape {array.shape}"
            raise InvalidArgument(
                f"{what}: embedding must have {self._dimension} values, got {got}", field=field
            )
        if not np.isfinite(array).all():
            raise InvalidArgument(
                f"{what}: embedding values must be finite (no NaN or infinity)", field=field
            )
        if not array.any():
            # Cosine distance to a zero vector is undefined (NaN).
            raise InvalidArgument(f"{what}: embedding must not be all zeros", field=field)
        return array


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Per pooled connection: pgvector's codec, and jsonb as Python objects.

    jsonb uses the binary format (a version byte, then JSON text) because
    COPY, which writes the chunks, only speaks binary.
    """
    await register_vector(conn)
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )


_JSONB_VERSION = b"\x01"


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


@contextmanager
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except _CONNECTION_ERRORS as exc:
        raise Unavailable("the document store is unavailable; retry later") from exc
    except asyncpg.InterfaceError as exc:
        # A connection the server closed mid-transaction (a restart) surfaces as
        # an InterfaceError when the transaction ends; any other is a bug.
        if "connection is closed" not in str(exc):
            raise
        raise Unavailable("the document store is unavailable; retry later") from exc


async def _upsert_document(
    conn: asyncpg.Connection, namespace: str, document: _PreparedDocument, text_search_config: str
) -> UpsertOutcome:
    """Write one document in its own transaction; a failure leaves the stored version untouched.

    Whatever the outcome, the document's failure record goes in the same
    transaction: what is stored is now what was last asked for. It goes after
    the document row is locked, the order Delete takes the two rows in.
    """
    values = (document.content_hash, document.title, document.metadata, len(document.chunks))
    async with conn.transaction():
        stored = await conn.fetchrow(_LOCK_DOCUMENT_SQL, namespace, document.document_id)
        if stored is None:
            if await conn.fetchval(_INSERT_DOCUMENT_SQL, namespace, document.document_id, *values):
                await conn.execute(_CLEAR_FAILURE_SQL, namespace, document.document_id)
                await _copy_chunks(conn, namespace, document)
                await _index_chunks(conn, namespace, document, text_search_config, replaced=None)
                return UpsertOutcome(document.document_id, UpsertStatus.CREATED, len(document.chunks))
            # Another writer created it between our read and our insert; its
            # transaction has committed, so the row can now be locked.
            stored = await conn.fetchrow(_LOCK_DOCUMENT_SQL, namespace, document.document_id)
            if stored is None:
                raise Unavailable(f"document {document.document_id!r:.80} changed while being written; retry")
        await conn.execute(_CLEAR_FAILURE_SQL, namespace, document.document_id)
        if stored["content_hash"] == document.content_hash:
            return UpsertOutcome(document.document_id, UpsertStatus.UNCHANGED, stored["chunk_count"])
        await conn.execute(_UPDATE_DOCUMENT_SQL, namespace, document.document_id, *values)
        await conn.execute(
            "DELETE FROM rag_chunks WHERE namespace = $1 AND document_id = $2",
            namespace,
            document.document_id,
        )
        await _copy_chunks(conn, namespace, document)
        await _index_chunks(conn, namespace, document, text_search_config, replaced=stored)
    return UpsertOutcome(document.document_id, UpsertStatus.UPDATED, len(document.chunks))


async def _copy_chunks(conn: asyncpg.Connection, namespace: str, document: _PreparedDocument) -> None:
    records = [
        (
            namespace,
            document.document_id,
            index,
            text,
            start_char,
            end_char,
            pages,
            document.metadata,
            document.content_hash,
            embedding,
        )
        for index, text, start_char, end_char, pages, embedding in document.chunks
    ]
    await conn.copy_records_to_table("rag_chunks", records=records, columns=_CHUNK_COLUMNS)


async def _index_chunks(
    conn: asyncpg.Connection,
    namespace: str,
    document: _PreparedDocument,
    text_search_config: str,
    *,
    replaced: asyncpg.Record | None,
) -> None:
    """Add the document's new chunks to the keyword index and the namespace's statistics.

    `replaced` is the stored row of the version just deleted, whose chunks
    (gone by now, their postings with them) leave the statistics.
    """
    old_chunks, old_length = 0, 0
    if replaced is not None:
        old_chunks, old_length = replaced["chunk_count"], replaced["keyword_length"]
    await conn.execute(
        INDEX_DOCUMENT_SQL,
        namespace,
        document.document_id,
        text_search_config,
        document.title,
        len(document.chunks) - old_chunks,
        old_length,
    )


def _hit(row: asyncpg.Record) -> Hit:
    return Hit(
        document_id=row["document_id"],
        chunk_index=row["chunk_index"],
        text=row["text"],
        title=row["title"],
        metadata=row["metadata"],
        score=float(row["score"]),
        dense=_leg_score(row["dense_rank"], row["dense_score"]),
        keyword=_leg_score(row["keyword_rank"], row["keyword_score"]),
        pages=tuple(row["pages"]),
    )


def _document_info(row: asyncpg.Record) -> DocumentInfo:
    failure = None if row["reason"] is None else DocumentFailure(row["reason"], row["failed_at"])
    return DocumentInfo(
        document_id=row["document_id"],
        title=row["title"],
        chunk_count=row["chunk_count"],
        content_hash=row["content_hash"],
        updated_at=row["updated_at"],
        failure=failure,
    )


def _leg_score(rank: int | None, score: float | None) -> LegScore | None:
    return None if rank is None or score is None else LegScore(int(rank), float(score))


def _require_plain_text(value: str, field: str, *, max_chars: int) -> str:
    require_text(value, field, max_chars=max_chars)
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    return value


def _require_pages(pages: Sequence[int], field: str, what: str) -> list[int]:
    """Page numbers as int4 holds them: 1-based, each after the one before."""
    try:
        values = [operator.index(page) for page in pages]
    except TypeError:
        raise InvalidArgument(f"{what}: pages must be whole numbers", field=field) from None
    previous = 0
    for page in values:
        if not previous < page <= _INT32_MAX:
            raise InvalidArgument(
                f"{what}: pages must be 1-based page numbers in increasing order, got {values!r:.80}",
                field=field,
            )
        previous = page
    return values


def _prepare_failures(failures: Sequence[FailureInput]) -> list[FailureInput]:
    """Every failure checked before any is written; one record per document."""
    seen: set[str] = set()
    for i, failure in enumerate(failures):
        field = f"documents[{i}]"
        document_id = _require_plain_text(
            failure.document_id, f"{field}.document_id", max_chars=MAX_DOCUMENT_ID_CHARS
        )
        if document_id in seen:
            raise InvalidArgument(
                f"document {document_id!r:.80} appears more than once in one call",
                field=f"{field}.document_id",
            )
        seen.add(document_id)
        if "\x00" in failure.title:
            raise InvalidArgument(f"{field}.title must not contain NUL characters", field=f"{field}.title")
        _require_plain_text(failure.reason, f"{field}.reason", max_chars=MAX_FAILURE_REASON_CHARS)
    return list(failures)


def _require_document_ids(document_ids: Sequence[str]) -> list[str]:
    for i, document_id in enumerate(document_ids):
        _require_plain_text(document_id, f"document_ids[{i}]", max_chars=MAX_DOCUMENT_ID_CHARS)
    return list(document_ids)


def _require_metadata(metadata: Mapping[str, Any], field: str, what: str) -> dict[str, Any]:
    """A JSON object PostgreSQL's jsonb accepts: finite numbers, no NUL characters."""
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"{what}: metadata must be an object", field=field)
    value = dict(metadata)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"{what}: metadata must hold only strings, finite numbers, bools, nulls, lists and objects",
            field=field,
        ) from None
    if _contains_nul(value):
        raise InvalidArgument(f"{what}: metadata must not contain NUL characters", field=field)
    return value


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(v) for v in value)
    return False
