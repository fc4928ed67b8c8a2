"""The prepared corpus into ChunkStore, as the gateway would upsert it, and what it takes up."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict

import asyncpg

from keyword_leg_bench.corpus import Corpus
from keyword_leg_bench.prepared import Prepared
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput

UPSERT_BATCH = 64

SIZES_SQL = """
SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS size,
       (SELECT count(*) FROM rag_postings) AS postings
FROM pg_class WHERE relname IN ('rag_chunks', 'rag_postings') ORDER BY relname
"""


async def load(
    store: ChunkStore, namespace: str, corpus: Corpus, prepared: Prepared, *, titles: bool
) -> float:
    """Upsert the corpus, UPSERT_BATCH documents at a time, as the gateway would; returns seconds taken."""
    by_document: dict[str, list[ChunkInput]] = defaultdict(list)
    for (document_id, index, text, start, end), vector in zip(
        prepared.chunks, prepared.chunk_vectors, strict=True
    ):
        by_document[document_id].append(ChunkInput(index, text, vector, start, end))
    documents = [
        DocumentInput(
            document_id=document_id,
            content_hash=hashlib.sha256(corpus.texts[document_id].encode()).hexdigest(),
            title=corpus.titles[document_id] if titles else "",
            metadata={},
            chunks=chunks,
        )
        for document_id, chunks in by_document.items()
    ]
    started = time.perf_counter()
    for start in range(0, len(documents), UPSERT_BATCH):
        await store.upsert(namespace, documents[start : start + UPSERT_BATCH])
    return time.perf_counter() - started


async def print_sizes(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(SIZES_SQL)
    sizes = ", ".join(f"{row['relname']} {row['size']}" for row in rows)
    print(f"{rows[0]['postings']} postings; with indexes: {sizes}", flush=True)
