"""Every train query through a search, its documents ranked and each search timed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

from keyword_leg_bench.corpus import Corpus
from keyword_leg_bench.prepared import Prepared
from services.common.limits import MAX_TOP_K
from services.retriever.hybrid import Fusion, SearchMode
from services.retriever.store import ChunkStore

TOP_K = MAX_TOP_K  # chunks per search: the most the API returns
CONCURRENCY = 2
# Connections of each store the runs search: enough for CONCURRENCY searches and a spare.
POOL_SIZE = 4

# The keyword leg the BM25 one replaced: a tsvector per chunk, which the schema does
# not keep, in a table made once. DDL takes no parameters: {namespace} is the bench's own.
TS_RANK_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS bench_tsvectors AS
SELECT c.id, c.document_id, to_tsvector('english', d.title || ' ' || c.text) AS tsv
FROM rag_chunks c JOIN rag_documents d USING (namespace, document_id)
WHERE c.namespace = '{namespace}';
CREATE INDEX IF NOT EXISTS bench_tsvectors_gin ON bench_tsvectors USING gin (tsv);
"""
TS_RANK_SQL = """
WITH q AS (SELECT replace(plainto_tsquery('english', $1)::text, ' & ', ' | ')::tsquery AS q)
SELECT t.document_id FROM bench_tsvectors t, q
WHERE t.tsv @@ q.q
ORDER BY ts_rank(t.tsv, q.q) DESC, t.id
LIMIT $2
"""


@dataclass(frozen=True)
class Run:
    # query id -> document ids, best first (a document where its best chunk ranks)
    rankings: dict[str, list[str]]
    latencies_ms: list[float]


async def run(
    store: ChunkStore,
    namespace: str,
    corpus: Corpus,
    prepared: Prepared,
    mode: SearchMode,
    fusion: Fusion | None = None,
) -> Run:
    """Every train query through ChunkStore.search, top_k = TOP_K chunks (the API's maximum)."""
    limit = asyncio.Semaphore(CONCURRENCY)
    latencies: list[float] = []

    async def one(index: int, query_id: str) -> tuple[str, list[str]]:
        async with limit:
            started = time.perf_counter()
            hits = await store.search(
                namespace,
                TOP_K,
                mode=mode,
                embedding=None if mode is SearchMode.KEYWORD else prepared.query_vectors[index],
                text=None if mode is SearchMode.DENSE else corpus.queries[query_id],
                fusion=fusion,
            )
            latencies.append((time.perf_counter() - started) * 1000)
        return query_id, list(dict.fromkeys(hit.document_id for hit in hits))

    results = await asyncio.gather(*(one(i, q) for i, q in enumerate(prepared.query_ids)))
    return Run(dict(results), latencies)


async def run_ts_rank(conn: asyncpg.Connection, namespace: str, corpus: Corpus) -> Run:
    """The baseline BM25 replaced: ts_rank over title + text, any query lexeme matching."""
    await conn.execute(TS_RANK_TABLE_SQL.format(namespace=namespace))
    rankings: dict[str, list[str]] = {}
    latencies: list[float] = []
    for query_id, text in corpus.queries.items():
        started = time.perf_counter()
        rows = await conn.fetch(TS_RANK_SQL, text, TOP_K)
        latencies.append((time.perf_counter() - started) * 1000)
        rankings[query_id] = list(dict.fromkeys(row["document_id"] for row in rows))
    return Run(rankings, latencies)
