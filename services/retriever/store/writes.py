"""Writes: upsert, delete and failure records, with the SQL they run.

Each function takes a connection (to the primary) and input the store has
already validated. A write that changes what a search can find also moves the
namespace's keyword statistics and bumps its index version, in the same
transaction (see keyword_index.py for the postings and their blocks).

Every writer takes its locks in one order, so none can deadlock another: the
document row, then failure records in document id order, then the namespace's
keyword lock (shared) and the blocks holding the chunks going, then the
namespace's statistics row, last, held only until commit.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.common.errors import Unavailable
from services.retriever import keyword_index
from services.retriever.filters import Filter, compile_filter
from services.retriever.store.records import FailureInput, UpsertOutcome, UpsertStatus
from services.retriever.store.validation import PreparedDocument

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

_DELETE_CHUNKS_SQL = "DELETE FROM rag_chunks WHERE namespace = $1 AND document_id = $2"

# A successful upsert or a delete of the document settles its last failure.
_CLEAR_FAILURE_SQL = "DELETE FROM rag_document_failures WHERE namespace = $1 AND document_id = $2"

# In the order of PreparedChunk, then the document's copies.
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

# After a document's chunks are indexed (keyword_index.INDEX_DOCUMENT_SQL):
# move the namespace's statistics. $1 namespace, $2 document id, $3 the
# document's keyword length, $4 chunks added minus chunks removed, $5 the
# keyword length of the version replaced (0 for a new document). The
# statistics row is the one every writer of the namespace updates, so it
# comes last in the transaction: the row lock is held only until commit. The
# same update bumps the namespace's index version: the lock orders the bumps
# as the commits, so no two writes share a version and a version seen means
# its write is visible.
_MOVE_STATISTICS_SQL = """
WITH document AS (
    UPDATE rag_documents SET keyword_length = $3::bigint WHERE namespace = $1 AND document_id = $2
)
INSERT INTO rag_keyword_stats AS s (namespace, chunks, total_length, version)
VALUES ($1, $4::bigint, $3::bigint - $5::bigint, 1)
ON CONFLICT (namespace) DO UPDATE
SET chunks = s.chunks + excluded.chunks,
    total_length = s.total_length + excluded.total_length,
    version = s.version + 1
"""

# The documents a delete takes, locked, and their chunks (whose postings go
# from the blocks before the documents go). {selection} is SQL from our code.
_LOCK_DOCUMENTS_SQL = """
WITH locked AS (
    SELECT d.document_id FROM rag_documents d
    WHERE d.namespace = $1 AND ({selection})
    ORDER BY d.document_id
    FOR UPDATE
)
SELECT (SELECT coalesce(array_agg(document_id), '{{}}') FROM locked) AS document_ids,
       (SELECT coalesce(array_agg(c.id), '{{}}') FROM rag_chunks c
        WHERE c.namespace = $1 AND c.document_id IN (SELECT document_id FROM locked)) AS chunk_ids
"""

# Deletes the documents in $3, locked by _LOCK_DOCUMENTS_SQL (their chunks and
# the chunks' lexemes go by cascade), clears their failure records and those
# of the ids in $2 (stored or not), and takes them out of the namespace's
# statistics, bumping its index version when a stored document went.
#
# Rows are locked in the order every writer takes them: documents, then
# failure records in document id order (as _RECORD_FAILURES_SQL writes them),
# then the statistics row. `totals` counts the cleared failures only so that
# `stats`, which reads it, runs after them: PostgreSQL otherwise finishes
# unreferenced CTEs last, in an order of its own.
_DELETE_DOCUMENTS_SQL = """
WITH deleted AS (
    DELETE FROM rag_documents d WHERE d.namespace = $1 AND d.document_id = ANY ($3::text[])
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

# One statement for the whole batch. Rows are written, and so locked, in
# document id order under the database's collation, as _DELETE_DOCUMENTS_SQL
# locks them, so the two cannot deadlock. now() is the transaction's start.
_RECORD_FAILURES_SQL = """
INSERT INTO rag_document_failures AS f (namespace, document_id, title, reason, failed_at)
SELECT $1, u.document_id, u.title, u.reason, now()
FROM unnest($2::text[], $3::text[], $4::text[]) AS u (document_id, title, reason)
ORDER BY u.document_id
ON CONFLICT (namespace, document_id) DO UPDATE
SET title = excluded.title, reason = excluded.reason, failed_at = excluded.failed_at
"""


async def upsert(
    conn: asyncpg.Connection,
    namespace: str,
    documents: Sequence[PreparedDocument],
    text_search_config: str,
) -> list[UpsertOutcome]:
    """Each document in its own transaction, so a failure part-way keeps the documents before it."""
    return [await _upsert_document(conn, namespace, document, text_search_config) for document in documents]


async def delete(
    conn: asyncpg.Connection, namespace: str, document_ids: Sequence[str], filter: Filter | None
) -> tuple[int, int]:
    """Documents listed or matching `filter`, and their failure records; (documents, chunks) deleted."""
    params: list[object] = [namespace, list(document_ids)]
    selection = "d.document_id = ANY($2::text[])"
    if filter is not None:
        selection += " OR " + compile_filter(filter, params, "d.metadata")
    async with conn.transaction():
        locked = await conn.fetchrow(_LOCK_DOCUMENTS_SQL.format(selection=selection), *params)
        await keyword_index.remove_chunks(conn, namespace, locked["chunk_ids"])
        row = await conn.fetchrow(
            _DELETE_DOCUMENTS_SQL, namespace, list(document_ids), list(locked["document_ids"])
        )
    return int(row["documents"]), int(row["chunks"])


async def record_failures(conn: asyncpg.Connection, namespace: str, failures: Sequence[FailureInput]) -> None:
    if not failures:
        return
    await conn.execute(
        _RECORD_FAILURES_SQL,
        namespace,
        [f.document_id for f in failures],
        [f.title for f in failures],
        [f.reason for f in failures],
    )


async def _upsert_document(
    conn: asyncpg.Connection, namespace: str, document: PreparedDocument, text_search_config: str
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
        replaced_chunks = await conn.fetchval(
            keyword_index.CHUNKS_OF_DOCUMENTS_SQL, namespace, [document.document_id]
        )
        await keyword_index.remove_chunks(conn, namespace, replaced_chunks)
        await conn.execute(_DELETE_CHUNKS_SQL, namespace, document.document_id)
        await _copy_chunks(conn, namespace, document)
        await _index_chunks(conn, namespace, document, text_search_config, replaced=stored)
    return UpsertOutcome(document.document_id, UpsertStatus.UPDATED, len(document.chunks))


async def _copy_chunks(conn: asyncpg.Connection, namespace: str, document: PreparedDocument) -> None:
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
    document: PreparedDocument,
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
    length = await conn.fetchval(
        keyword_index.INDEX_DOCUMENT_SQL, namespace, document.document_id, text_search_config, document.title
    )
    await conn.execute(
        _MOVE_STATISTICS_SQL,
        namespace,
        document.document_id,
        length,
        len(document.chunks) - old_chunks,
        old_length,
    )
