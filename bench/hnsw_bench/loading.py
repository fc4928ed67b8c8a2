"""Loading the synthetic chunks through ChunkStore.upsert, and what they take up in PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import asyncpg

from benchkit.output import log
from hnsw_bench.dataset import CHUNKS_PER_DOCUMENT, STOP_WORDS, Dataset
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput

NAMESPACE = "bench"
UPSERT_BATCH = 64
LOADERS = 2  # concurrent upserts
HNSW_INDEX = "rag_chunks_embedding_hnsw"
PROGRESS_EVERY_S = 30

# The keyword index is the blocks (with their indexes), each chunk's lexemes
# (with the fresh chunks' indexes, empty once compacted but keeping their
# size), the lexemes waiting to be merged, and rag_postings (empty: written
# before blocks existed).
SIZES_SQL = f"""
SELECT (SELECT coalesce(sum(postings), 0) FROM rag_keyword_blocks) AS postings,
       (SELECT count(DISTINCT lexeme) FROM rag_keyword_blocks) AS lexemes,
       (SELECT count(*) FROM rag_keyword_blocks) AS blocks,
       pg_total_relation_size('rag_chunks') - pg_relation_size('{HNSW_INDEX}') AS chunks,
       pg_relation_size('{HNSW_INDEX}') AS hnsw,
       pg_total_relation_size('rag_keyword_blocks') + pg_total_relation_size('rag_chunk_lexemes')
           + pg_total_relation_size('rag_keyword_fresh') + pg_total_relation_size('rag_keyword_unmerged')
           + pg_total_relation_size('rag_postings')
           AS postings_size,
       pg_total_relation_size('rag_keyword_blocks') AS blocks_size,
       pg_total_relation_size('rag_chunk_lexemes') AS chunk_lexemes_size
"""


@dataclass(frozen=True)
class Loaded:
    upsert_s: float
    index_build_s: float | None  # None: the index grew during the load
    # Compacting what the compaction running beside the load had not reached.
    compact_s: float
    postings: int
    lexemes: int
    blocks: int
    table_mb: float
    hnsw_mb: float
    # The whole keyword index, then its two parts.
    postings_mb: float
    blocks_mb: float
    chunk_lexemes_mb: float


def documents_of(dataset: Dataset) -> list[DocumentInput]:
    """CHUNKS_PER_DOCUMENT consecutive chunks a document."""
    return [
        DocumentInput(
            document_id=f"doc-{d:06d}",
            content_hash=str(d),
            title="",
            metadata={},
            chunks=[
                ChunkInput(i, dataset.texts[row], dataset.vectors[row], 0, len(dataset.texts[row]))
                for i, row in enumerate(range(start, min(start + CHUNKS_PER_DOCUMENT, len(dataset.texts))))
            ],
        )
        for d, start in enumerate(range(0, len(dataset.texts), CHUNKS_PER_DOCUMENT))
    ]


async def load(store: ChunkStore, conn: asyncpg.Connection, dataset: Dataset, *, keep_index: bool) -> Loaded:
    documents = documents_of(dataset)
    index_sql = await conn.fetchval(f"SELECT pg_get_indexdef('{HNSW_INDEX}'::regclass)")
    if not keep_index:
        await conn.execute(f"DROP INDEX {HNSW_INDEX}")

    batches = [documents[i : i + UPSERT_BATCH] for i in range(0, len(documents), UPSERT_BATCH)]
    started = time.perf_counter()

    async def loader(first: int) -> None:
        for batch in batches[first::LOADERS]:
            await store.upsert(NAMESPACE, batch)

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            count = await conn.fetchval("SELECT count(*) FROM rag_documents")
            log(f"  {count * CHUNKS_PER_DOCUMENT} chunks after {time.perf_counter() - started:.0f} s")

    async def compact() -> None:
        # What every retriever replica does in the background while documents come in.
        while True:
            if not (await store.maintain_keyword_index()).worked:
                await asyncio.sleep(1)

    reporter = asyncio.create_task(progress())
    compactor = asyncio.create_task(compact())
    try:
        await asyncio.gather(*(loader(i) for i in range(LOADERS)))
    finally:
        for task in (reporter, compactor):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    upsert_s = time.perf_counter() - started
    log(f"upserted {len(dataset.texts)} chunks in {upsert_s:.0f} s")

    index_build_s = None
    if not keep_index:
        started = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute(index_sql)
        index_build_s = time.perf_counter() - started
        log(f"built the HNSW index in {index_build_s:.0f} s")
    # The rest of what the background compaction had not reached yet.
    started = time.perf_counter()
    await store.compact_keyword_index()
    compact_s = time.perf_counter() - started
    log(f"compacted the rest of the keyword index in {compact_s:.0f} s")
    await conn.execute("VACUUM ANALYZE")
    row = await conn.fetchrow(SIZES_SQL)
    mb = 1024 * 1024
    return Loaded(
        upsert_s,
        index_build_s,
        compact_s,
        row["postings"],
        row["lexemes"],
        row["blocks"],
        row["chunks"] / mb,
        row["hnsw"] / mb,
        row["postings_size"] / mb,
        row["blocks_size"] / mb,
        row["chunk_lexemes_size"] / mb,
    )


async def require_stop_words(conn: asyncpg.Connection) -> None:
    """The text model's premise: PostgreSQL's English configuration drops every STOP_WORDS entry."""
    kept = await conn.fetchval("SELECT to_tsvector('english', $1)::text", " ".join(STOP_WORDS))
    if kept:
        raise RuntimeError(f"not English stop words to PostgreSQL: {kept}")
