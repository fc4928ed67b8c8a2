"""The alternatives the server's keyword and fusion defaults were chosen from (--sweep)."""

from __future__ import annotations

import itertools
import time

import asyncpg

from benchkit import defaults
from benchkit.store import connect_store
from keyword_leg_bench.corpus import Corpus
from keyword_leg_bench.prepared import Prepared
from keyword_leg_bench.runs import POOL_SIZE, run, run_ts_rank
from keyword_leg_bench.scores import print_header, print_row, score
from services.retriever.hybrid import Fusion, SearchMode
from services.retriever.keyword import Bm25
from services.retriever.store import ChunkStore

K1_GRID = (0.9, 1.2, 1.5)
B_GRID = (0.5, 0.75, 0.9)
RRF_K_GRID = (2.0, 5.0, 10.0, 20.0, 60.0)
WEIGHT_GRID = ((1.0, 1.0), (1.0, 1.5), (1.5, 1.0))
DEPTH_GRID = (50, 100, 200)
STATISTICS_READS = 200


async def sweep_keyword(
    dsn: str, conn: asyncpg.Connection, corpus: Corpus, prepared: Prepared, namespaces: tuple[str, str]
) -> None:
    """ts_rank, BM25 without titles, and BM25 over a k1 x b grid; `namespaces`: with titles, without."""
    with_titles, no_titles = namespaces
    print_header("keyword leg alternatives")
    print_row(
        "ts_rank, any lexeme (bench-only tsvector)",
        score(await run_ts_rank(conn, with_titles, corpus), corpus.qrels),
    )
    settings = [(Bm25(defaults.BM25_K1, defaults.BM25_B), no_titles, "text only")] + [
        (Bm25(k1, b), with_titles, "title + text") for k1, b in itertools.product(K1_GRID, B_GRID)
    ]
    for bm25, namespace, fields in settings:
        store = await connect_store(dsn, max_pool_size=POOL_SIZE, bm25=bm25)
        try:
            result = await run(store, namespace, corpus, prepared, SearchMode.KEYWORD)
            print_row(f"BM25 k1 {bm25.k1:g} b {bm25.b:g}, {fields}", score(result, corpus.qrels))
        finally:
            await store.close()


async def sweep_fusion(store: ChunkStore, namespace: str, corpus: Corpus, prepared: Prepared) -> None:
    print_header("hybrid fusion settings")
    for rrf_k, (dense_weight, keyword_weight), depth in itertools.product(
        RRF_K_GRID, WEIGHT_GRID, DEPTH_GRID
    ):
        fusion = Fusion(rrf_k, dense_weight, keyword_weight, depth)
        result = await run(store, namespace, corpus, prepared, SearchMode.HYBRID, fusion)
        print_row(
            f"rrf_k {rrf_k:g}, weights {dense_weight:g}/{keyword_weight:g}, depth {depth}",
            score(result, corpus.qrels),
        )


async def time_statistics(conn: asyncpg.Connection, namespace: str) -> None:
    """What keeping N and the total length costs at query time: the stats row against summing documents."""
    print()
    for label, sql in (
        ("statistics row", "SELECT chunks, total_length FROM rag_keyword_stats WHERE namespace = $1"),
        (
            "sum over rag_documents",
            "SELECT sum(chunk_count), sum(keyword_length) FROM rag_documents WHERE namespace = $1",
        ),
    ):
        started = time.perf_counter()
        for _ in range(STATISTICS_READS):
            await conn.fetchrow(sql, namespace)
        per_read_ms = (time.perf_counter() - started) / STATISTICS_READS * 1000
        print(f"N and total length from the {label}: {per_read_ms:.2f} ms")
