"""ChunkStore: the one object the servicer holds, over a pool of connections.

It opens the pool (after migrating the schema), answers health checks, and for
every call checks the input (validation.py), takes a connection and hands both
to the read (reads.py) or write (writes.py) that does the work, or to the
feedback store (feedback.py). Every method
is scoped to one namespace; no query reads or writes another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
from opentelemetry import trace

from services.common.errors import InvalidArgument, Unavailable
from services.common.limits import require_delete_selection
from services.common.timing import StageTimer
from services.common.validation import require_namespace
from services.retriever import keyword_index
from services.retriever.filters import Filter
from services.retriever.hybrid import Fusion, SearchMode, SearchQuery, dense_search_settings, require_fusion
from services.retriever.keyword import Bm25
from services.retriever.keyword_index import MaintenanceRound
from services.retriever.limits import (
    DEFAULT_EF_SEARCH,
    DEFAULT_MAX_REPLICA_LAG_MS,
    DEFAULT_PAGE_SIZE,
    DEFAULT_POOL_ACQUIRE_TIMEOUT_S,
    DEFAULT_POOL_MAX_SIZE,
    DEFAULT_POOL_MIN_SIZE,
    DEFAULT_STATEMENT_TIMEOUT_MS,
    MAX_STATEMENT_TIMEOUT_MS,
    require_ef_search,
    require_page_size,
)
from services.retriever.schema import (
    DEFAULT_HNSW_EF_CONSTRUCTION,
    DEFAULT_HNSW_M,
    DEFAULT_TEXT_SEARCH_CONFIG,
    MAX_INDEXED_DIMENSION,
    migrate,
)
from services.retriever.store import feedback, reads, validation, writes
from services.retriever.store.connection import acquire, create_pool, session_settings, warn_if_superuser
from services.retriever.store.records import (
    DocumentInput,
    DocumentPage,
    DocumentState,
    Embedding,
    FailureInput,
    FeedbackInput,
    FeedbackPage,
    Hit,
    Searched,
    StoredDocument,
    UpsertOutcome,
)
from services.retriever.store.replicas import ReadReplicas, Replica

T = TypeVar("T")

# How long a hybrid search waits for a second connection before running its
# legs one after the other on the first.
SPARE_CONNECTION_WAIT_S = 0.01


class ChunkStore:
    """Documents and chunks of every namespace, with dense, keyword and hybrid search.

    Searches run dense (HNSW, cosine), keyword (BM25, see keyword.py) or hybrid
    (both, fused by reciprocal rank fusion, see hybrid.py), each as one
    statement. Each namespace has an index version, bumped by every write that
    changes what a search can find, and failure records of documents whose
    ingestion failed, cleared by the document's next successful upsert or its
    delete.

    Caller input is refused with InvalidArgument before any SQL runs; a
    database that cannot be reached, or no connection free within
    `pool_acquire_timeout_s`, surfaces as Unavailable, a statement past the
    statement timeout as DeadlineExceeded (see connection.py).

    The store owns `pool` and closes it in `close()`. Use `connect()` to build
    one: it migrates the schema, registers the codecs the store relies on and
    starts every connection with the dense leg's settings for `default_ef_search`
    (hybrid.dense_search_settings), which a search at the default relies on.
    `text_search_config` must be the one the schema was migrated with.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        dimension: int,
        default_ef_search: int = DEFAULT_EF_SEARCH,
        text_search_config: str = DEFAULT_TEXT_SEARCH_CONFIG,
        bm25: Bm25 | None = None,
        default_fusion: Fusion | None = None,
        pool_acquire_timeout_s: float = DEFAULT_POOL_ACQUIRE_TIMEOUT_S,
        replicas: ReadReplicas | None = None,
    ) -> None:
        if not 1 <= dimension <= MAX_INDEXED_DIMENSION:
            raise ValueError(f"dimension must be 1..{MAX_INDEXED_DIMENSION}, got {dimension}")
        if not pool_acquire_timeout_s > 0:
            raise ValueError(f"pool_acquire_timeout_s must be more than 0, got {pool_acquire_timeout_s}")
        default_fusion = default_fusion or Fusion()
        # Configuration, not caller input: the request checks, raised as ValueError.
        try:
            require_ef_search(default_ef_search, "default_ef_search")
            require_fusion(default_fusion, "default_fusion")
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        self._pool = pool
        self._acquire_timeout_s = pool_acquire_timeout_s
        self._dimension = dimension
        self._default_ef_search = default_ef_search
        self._text_search_config = text_search_config
        self._bm25 = bm25 or Bm25()
        self._default_fusion = default_fusion
        self._replicas = replicas or ReadReplicas([], DEFAULT_MAX_REPLICA_LAG_MS)

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        dimension: int,
        hnsw_m: int = DEFAULT_HNSW_M,
        hnsw_ef_construction: int = DEFAULT_HNSW_EF_CONSTRUCTION,
        default_ef_search: int = DEFAULT_EF_SEARCH,
        text_search_config: str = DEFAULT_TEXT_SEARCH_CONFIG,
        bm25: Bm25 | None = None,
        default_fusion: Fusion | None = None,
        min_pool_size: int = DEFAULT_POOL_MIN_SIZE,
        max_pool_size: int = DEFAULT_POOL_MAX_SIZE,
        pool_acquire_timeout_s: float = DEFAULT_POOL_ACQUIRE_TIMEOUT_S,
        statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
        server_settings: Mapping[str, str] | None = None,
        read_dsns: Sequence[str] = (),
        max_replica_lag_ms: int = DEFAULT_MAX_REPLICA_LAG_MS,
    ) -> ChunkStore:
        """Migrate the schema, then open a pool whose connections speak `vector` and `jsonb`.

        `server_settings` adds session settings for every connection (e.g.
        planner settings); see connection.session_settings for the defaults.
        `statement_timeout_ms` is the pooled connections' statement_timeout.
        `read_dsns` are read replicas of the same database (see replicas.py):
        their pools connect on first use, so a replica that is down delays
        nothing; run `watch_replicas()` to put them in rotation.
        RuntimeError when the database cannot hold what the settings ask for:
        another embedding dimension, or a text search configuration it does
        not have or did not build the keyword index with; or when it was not
        prepared by database_setup (no vector extension).
        """
        if not 1 <= statement_timeout_ms <= MAX_STATEMENT_TIMEOUT_MS:
            raise ValueError(
                f"statement_timeout_ms must be 1..{MAX_STATEMENT_TIMEOUT_MS}, got {statement_timeout_ms}"
            )
        settings = session_settings(server_settings)
        # The vector type must exist before a connection can register its
        # codec, so the migration runs on a plain connection first. Without a
        # statement timeout: a replica waits on the migration lock for as long
        # as another takes to migrate, and a migration may rewrite big tables.
        conn = await asyncpg.connect(dsn, server_settings={**settings, "statement_timeout": "0"})
        try:
            await warn_if_superuser(conn)
            await migrate(
                conn,
                dimension=dimension,
                hnsw_m=hnsw_m,
                hnsw_ef_construction=hnsw_ef_construction,
                text_search_config=text_search_config,
            )
        finally:
            await conn.close()
        # Every search connection starts with the dense leg's settings for the default ef_search,
        # so a search at the default sets nothing.
        settings = {**settings, **dense_search_settings(default_ef_search)}
        pool = await create_pool(
            dsn,
            settings,
            min_size=min_pool_size,
            max_size=max_pool_size,
            statement_timeout_ms=statement_timeout_ms,
        )
        replicas = [
            Replica(
                _host_of(read_dsn),
                await create_pool(
                    read_dsn,
                    settings,
                    min_size=0,
                    max_size=max_pool_size,
                    statement_timeout_ms=statement_timeout_ms,
                ),
            )
            for read_dsn in read_dsns
        ]
        return cls(
            pool,
            replicas=ReadReplicas(replicas, max_replica_lag_ms),
            dimension=dimension,
            default_ef_search=default_ef_search,
            text_search_config=text_search_config,
            bm25=bm25,
            default_fusion=default_fusion,
            pool_acquire_timeout_s=pool_acquire_timeout_s,
        )

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def default_fusion(self) -> Fusion:
        """Fusion settings a hybrid search uses when it is given none."""
        return self._default_fusion

    async def close(self) -> None:
        await self._replicas.close()
        await self._pool.close()

    @property
    def replicas(self) -> list[Replica]:
        return self._replicas.all

    async def check_replicas(self) -> None:
        """Put each read replica in or out of rotation now (watch_replicas does it every second)."""
        await self._replicas.check(self._pool)

    async def watch_replicas(self) -> None:
        """Keep the read replicas' rotation current, for as long as the store is open (a task)."""
        await self._replicas.watch(self._pool)

    def _connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        return acquire(self._pool, self._acquire_timeout_s)

    async def ping(self) -> None:
        """Return once the database answers with the schema in place.

        Unavailable when it does not answer; the database's own error (an
        UndefinedTableError) when it answers without the schema.
        """
        async with self._connection() as conn:
            await conn.execute("SELECT 1 FROM rag_chunks LIMIT 0")

    async def upsert(self, namespace: str, documents: Sequence[DocumentInput]) -> list[UpsertOutcome]:
        """Store each document whole, or leave its previous version as it was.

        Every document is validated before any is written. Each is then written
        in its own transaction, so a failure part-way through a batch keeps the
        documents before it (a retry reports them UNCHANGED).
        """
        require_namespace(namespace)
        prepared = validation.prepare_documents(documents, self._dimension)
        if not prepared:
            return []
        async with self._connection() as conn:
            return await writes.upsert(conn, namespace, prepared, self._text_search_config)

    async def delete(
        self, namespace: str, document_ids: Sequence[str] = (), filter: Filter | None = None
    ) -> tuple[int, int]:
        """Delete the listed documents and those whose metadata match `filter`.

        Returns (documents, chunks) deleted. The failure records of the listed
        ids (stored or not) and of the documents deleted go too. With neither
        ids nor filter, InvalidArgument.
        """
        require_namespace(namespace)
        require_delete_selection(bool(document_ids), filter is not None)
        ids = validation.require_document_ids(document_ids)
        async with self._connection() as conn:
            return await writes.delete(conn, namespace, ids, filter)

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
        """The top_k chunks for the query, best first: search_at's hits."""
        searched = await self.search_at(
            namespace,
            top_k,
            mode=mode,
            embedding=embedding,
            text=text,
            filter=filter,
            ef_search=ef_search,
            fusion=fusion,
        )
        return searched.hits

    async def search_at(
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
        timer: StageTimer | None = None,
        min_index_version: int | None = None,
    ) -> Searched:
        """The top_k chunks for the query, best first, and the index version they were found at.

        DENSE ranks by cosine similarity to `embedding` (score = 1 - distance),
        KEYWORD by BM25 over `text`, HYBRID fuses both (see hybrid.py; `fusion`
        unset takes the store's defaults). Each hit carries its rank and score
        in each leg that found it. `filter` applies to every leg. `timer`, when
        given, times each leg and the fusion as its stages.

        A read replica in rotation runs it when one is; a replica that fails,
        or whose snapshot holds an index version below `min_index_version`,
        hands it to the primary, whose data is always recent enough: the
        version came from a write it committed.
        """
        query = validation.prepare_search(
            namespace,
            top_k,
            mode=mode,
            embedding=embedding,
            text=text,
            filter=filter,
            ef_search=self._default_ef_search if ef_search is None else ef_search,
            fusion=fusion or self._default_fusion,
            dimension=self._dimension,
        )
        timer = timer or StageTimer(trace.get_tracer(__name__), "rag.retriever")
        searched = await self._on_a_replica(
            lambda pool: self._search_on(pool, query, timer, min_index_version)
        )
        if searched is None:  # no replica in rotation, or behind the caller's write
            searched = await self._search_on(self._pool, query, timer, None)
        assert searched is not None  # no minimum is asked of the primary
        return searched

    async def _on_a_replica(self, read: Callable[[asyncpg.Pool], Awaitable[T | None]]) -> T | None:
        """`read` on the next replica in rotation that answers; None when none did, or it returned None.

        A replica that fails is taken out of rotation and the next one tried;
        one that answers None (too far behind for this read) ends the turn.
        """
        for replica in self._replicas.in_turn():
            try:
                return await read(replica.pool)
            except Unavailable as error:
                self._replicas.failed(replica, error)
        return None

    async def _search_on(
        self, pool: asyncpg.Pool, query: SearchQuery, timer: StageTimer, min_index_version: int | None
    ) -> Searched | None:
        async with acquire(pool, self._acquire_timeout_s) as conn, self._spare(pool, query) as spare:
            return await reads.search(
                conn,
                query,
                self._text_search_config,
                self._bm25,
                timer,
                min_index_version,
                spare,
                session_ef_search=self._default_ef_search,
            )

    @asynccontextmanager
    async def _spare(
        self, pool: asyncpg.Pool, query: SearchQuery
    ) -> AsyncIterator[asyncpg.Connection | None]:
        """A second connection for a hybrid search's other leg, when one is free at once; else None.

        Never waited for: a busy pool runs the legs one after the other
        rather than hold a connection while waiting for another.
        """
        if query.mode is not SearchMode.HYBRID or (
            pool.get_idle_size() == 0 and pool.get_size() >= pool.get_max_size()
        ):
            yield None
            return
        try:
            conn = await pool.acquire(timeout=SPARE_CONNECTION_WAIT_S)
        except TimeoutError:
            yield None
            return
        try:
            yield conn
        finally:
            # With the pool's own budget: asyncpg would reuse the short acquire
            # timeout for the reset query, and a slow reset would close the
            # connection and fail the search.
            await pool.release(conn, timeout=self._acquire_timeout_s)

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

    async def maintain_keyword_index(self) -> MaintenanceRound:
        """One batch of keyword index compaction (and conversion) per namespace waiting for it."""
        async with self._connection() as conn:
            return await keyword_index.maintain(conn, self._text_search_config)

    async def compact_keyword_index(self) -> MaintenanceRound:
        """Compact and convert until nothing waits: after a bulk load, or in tests and benchmarks."""
        async with self._connection() as conn:
            return await keyword_index.maintain_until_done(conn, self._text_search_config)

    async def stored_documents(self, namespace: str, document_ids: Sequence[str]) -> list[StoredDocument]:
        """What is stored for these ids, in the order asked; ids not stored are absent."""
        require_namespace(namespace)
        ids = validation.require_document_ids(document_ids)
        if not ids:
            return []
        async with self._connection() as conn:
            return await reads.stored_documents(conn, namespace, ids)

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
            return await reads.index_version(conn, namespace)

    async def record_failures(self, namespace: str, failures: Sequence[FailureInput]) -> None:
        """Record (or replace) each document's failure, stamped now.

        A stored version of the document stays as it was and the index version
        does not move: nothing a search can find has changed.
        """
        require_namespace(namespace)
        prepared = validation.prepare_failures(failures)
        if not prepared:
            return
        async with self._connection() as conn:
            await writes.record_failures(conn, namespace, prepared)

    async def list_documents(
        self,
        namespace: str,
        *,
        state: DocumentState = DocumentState.ALL,
        page_size: int = DEFAULT_PAGE_SIZE,
        after: str = "",
    ) -> DocumentPage:
        """Up to page_size documents in `state` whose ids sort after `after`, ordered by id.

        A stored document with a failure record shows both its stored fields
        and the failure, in every state that lists it.
        """
        require_namespace(namespace)
        require_page_size(page_size)
        if "\x00" in after:
            raise InvalidArgument("after must not contain NUL characters", field="after")

        async def list_on(pool: asyncpg.Pool) -> DocumentPage:
            async with acquire(pool, self._acquire_timeout_s) as conn:
                return await reads.list_documents(conn, namespace, state, page_size, after)

        listed = await self._on_a_replica(list_on)
        return listed if listed is not None else await list_on(self._pool)

    async def submit_feedback(self, namespace: str, submission: FeedbackInput) -> int:
        """Store a submission's judgments, all or none, on the primary; its feedback id.

        InvalidArgument for a namespace that holds no documents. The index
        version does not move: nothing a search can find has changed.
        """
        require_namespace(namespace)
        prepared = validation.prepare_feedback(submission)
        async with self._connection() as conn:
            return await feedback.submit(conn, namespace, prepared)

    async def list_feedback(
        self, namespace: str, *, page_size: int = DEFAULT_PAGE_SIZE, after: int = 0
    ) -> FeedbackPage:
        """Up to page_size feedback with ids above `after`, ordered by id (see feedback.list_feedback).

        From a read replica in rotation when there is one: feedback submitted
        within the replica's lag may not be listed yet.
        """
        require_namespace(namespace)
        require_page_size(page_size)
        if after < 0:
            raise InvalidArgument(f"after must be 0 or more, got {after}", field="after")

        async def list_on(pool: asyncpg.Pool) -> FeedbackPage:
            async with acquire(pool, self._acquire_timeout_s) as conn:
                return await feedback.list_feedback(conn, namespace, page_size, after)

        listed = await self._on_a_replica(list_on)
        return listed if listed is not None else await list_on(self._pool)


def _host_of(dsn: str) -> str:
    """A replica's name for the logs: its host and port, never its password."""
    parsed = urlsplit(dsn)
    query_host = parse_qs(parsed.query).get("host", [""])[0]
    return f"{parsed.hostname or query_host or 'local'}:{parsed.port or 5432}"
