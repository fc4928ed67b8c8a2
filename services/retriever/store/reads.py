"""Reads: search, stored hashes, index versions and document listings, with the SQL they run.

Each function takes a connection and input the store has already validated,
and changes nothing, so any of them may run on a read replica.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import asyncpg
from opentelemetry import trace

from services.common.timing import StageTimer
from services.retriever.hybrid import (
    DENSE_SEARCH_SETTINGS_SQL,
    HITS_SQL,
    Ranked,
    SearchMode,
    SearchQuery,
    dense_hits_sql,
    dense_leg_sql,
    dense_ranking,
    fuse,
)
from services.retriever.keyword import Bm25
from services.retriever.keyword_search import KeywordLeg, search_keyword
from services.retriever.store.records import (
    DocumentFailure,
    DocumentInfo,
    DocumentPage,
    DocumentState,
    Hit,
    LegScore,
    Searched,
    StoredDocument,
)

_STORED_DOCUMENTS_SQL = """
SELECT document_id, content_hash, chunk_count FROM rag_documents
WHERE namespace = $1 AND document_id = ANY($2::text[])
"""

_INDEX_VERSION_SQL = "SELECT version FROM rag_keyword_stats WHERE namespace = $1"

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


async def search(
    conn: asyncpg.Connection,
    query: SearchQuery,
    text_search_config: str,
    bm25: Bm25,
    timer: StageTimer,
    min_index_version: int | None = None,
    spare: asyncpg.Connection | None = None,
    session_ef_search: int | None = None,
) -> Searched | None:
    """The query's hits, best first: each leg, then fusion and the hits' fields, each a stage of `timer`.

    One snapshot for everything, so the keyword leg's statistics and blocks
    agree, a chunk a leg found is still there when its fields are fetched, and
    the index version returned is the one of the data searched. None when that
    version is below `min_index_version` (a replica behind a write the caller
    has seen).

    A dense search at the ef_search the connection's session already has
    (`session_ef_search`, see hybrid.dense_search_settings) is one statement,
    its own snapshot. Any other search runs in a REPEATABLE READ transaction,
    and stops before any leg runs when the version is too old.

    With a `spare` connection a hybrid search runs its two legs at once, the
    dense one on the spare in a transaction that imports this one's snapshot
    (pg_export_snapshot / SET TRANSACTION SNAPSHOT): the same data, both
    server processes busy. The HNSW settings are transaction-local: they end
    with the search.
    """
    if query.mode is SearchMode.DENSE and query.ef_search == session_ef_search:
        return await _dense_search(conn, query, timer, min_index_version)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await index_version(conn, query.namespace)
        if min_index_version is not None and version < min_index_version:
            return None
        legs = _Legs(query, text_search_config, bm25, timer, session_ef_search)
        if query.mode is SearchMode.HYBRID and spare is not None:
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            if not _SNAPSHOT_ID.fullmatch(snapshot):
                raise RuntimeError(f"unexpected snapshot id from the server: {snapshot!r}")
            async with spare.transaction(isolation="repeatable_read", readonly=True):
                await spare.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                dense, keyword = await asyncio.gather(legs.dense(spare), legs.keyword(conn))
        else:
            dense = await legs.dense(conn) if query.mode is not SearchMode.KEYWORD else []
            keyword = await legs.keyword(conn) if query.mode is not SearchMode.DENSE else []
        with timer.stage("fusion", {"search.mode": query.mode.value}):
            ranked = fuse(query, dense, keyword)
            rows = await conn.fetch(HITS_SQL, query.namespace, [r.chunk_id for r in ranked])
    fields = {row["id"]: row for row in rows}
    return Searched([_hit(fields[r.chunk_id], r) for r in ranked], version)


async def _dense_search(
    conn: asyncpg.Connection, query: SearchQuery, timer: StageTimer, min_index_version: int | None
) -> Searched | None:
    mode = {"search.mode": query.mode.value}
    with timer.stage("dense", mode):
        sql, params = dense_hits_sql(query)
        rows = await conn.fetch(sql, *params)
    version = 0 if rows[0]["version"] is None else int(rows[0]["version"])
    if min_index_version is not None and version < min_index_version:
        return None
    with timer.stage("fusion", mode):
        found = [row for row in rows if row["id"] is not None]
        ranked = fuse(query, dense_ranking([(row["id"], row["distance"]) for row in found]), [])
    fields = {row["id"]: row for row in found}
    return Searched([_hit(fields[r.chunk_id], r) for r in ranked], version)


# What pg_export_snapshot returns: hex fields joined by dashes. Checked before
# it is written into SET TRANSACTION SNAPSHOT, which takes no parameters.
_SNAPSHOT_ID = re.compile(r"[0-9A-F]+(-[0-9A-F]+)+")


class _Legs:
    """The two legs of one search, each timed as its own stage, on whichever connection is given."""

    def __init__(
        self,
        query: SearchQuery,
        text_search_config: str,
        bm25: Bm25,
        timer: StageTimer,
        session_ef_search: int | None,
    ) -> None:
        self._query = query
        self._session_ef_search = session_ef_search
        self._text_search_config = text_search_config
        self._bm25 = bm25
        self._timer = timer
        self._mode = {"search.mode": query.mode.value}

    async def dense(self, conn: asyncpg.Connection) -> list[tuple[int, float]]:
        with self._timer.stage("dense", self._mode):
            if self._query.ef_search != self._session_ef_search:
                await conn.execute(DENSE_SEARCH_SETTINGS_SQL, str(self._query.ef_search))
            sql, params = dense_leg_sql(self._query)
            nearest = await conn.fetch(sql, *params)
        return dense_ranking([(row["id"], row["distance"]) for row in nearest])

    async def keyword(self, conn: asyncpg.Connection) -> list[tuple[int, float]]:
        assert self._query.text is not None
        with self._timer.stage("keyword", self._mode) as span:
            leg = await search_keyword(
                conn,
                self._query.namespace,
                self._query.text,
                self._query.depth,
                text_search_config=self._text_search_config,
                bm25=self._bm25,
                filter=self._query.filter,
            )
            _describe_keyword_leg(span, leg)
        return list(zip(leg.chunk_ids, leg.scores, strict=True))


def _describe_keyword_leg(span: trace.Span, leg: KeywordLeg) -> None:
    span.set_attribute("rag.retriever.keyword.terms", leg.terms)
    span.set_attribute("rag.retriever.keyword.blocks", leg.blocks)
    span.set_attribute("rag.retriever.keyword.blocks_read", leg.blocks_read)
    span.set_attribute("rag.retriever.keyword.postings_read", leg.postings_read)
    span.set_attribute("rag.retriever.keyword.chunks_scored", leg.chunks_scored)
    span.set_attribute("rag.retriever.keyword.terminated_early", leg.terminated_early)


async def stored_documents(
    conn: asyncpg.Connection, namespace: str, document_ids: Sequence[str]
) -> list[StoredDocument]:
    """What is stored for these ids, in the order asked, each once; ids not stored are absent."""
    if not document_ids:
        return []
    rows = await conn.fetch(_STORED_DOCUMENTS_SQL, namespace, list(document_ids))
    stored = {
        row["document_id"]: StoredDocument(row["document_id"], row["content_hash"], row["chunk_count"])
        for row in rows
    }
    return [stored[i] for i in dict.fromkeys(document_ids) if i in stored]


async def index_version(conn: asyncpg.Connection, namespace: str) -> int:
    version = await conn.fetchval(_INDEX_VERSION_SQL, namespace)
    return 0 if version is None else int(version)


async def list_documents(
    conn: asyncpg.Connection, namespace: str, state: DocumentState, page_size: int, after: str
) -> DocumentPage:
    rows = await conn.fetch(
        _LIST_COLUMNS + _LIST_SOURCES[state] + "\nLIMIT $3", namespace, after, page_size + 1
    )
    documents = [_document_info(row) for row in rows[:page_size]]
    more = len(rows) > page_size
    return DocumentPage(documents, documents[-1].document_id if more else None)


def _hit(row: asyncpg.Record, ranked: Ranked) -> Hit:
    return Hit(
        document_id=row["document_id"],
        chunk_index=row["chunk_index"],
        text=row["text"],
        title=row["title"],
        metadata=row["metadata"],
        score=ranked.score,
        dense=_leg_score(ranked.dense),
        keyword=_leg_score(ranked.keyword),
        pages=tuple(row["pages"]),
    )


def _leg_score(place: tuple[int, float] | None) -> LegScore | None:
    return None if place is None else LegScore(place[0], place[1])


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
