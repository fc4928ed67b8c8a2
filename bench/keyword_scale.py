"""The keyword leg as the corpus grows: pruned against exhaustive BM25, beside dense search.

    python bench/keyword_scale.py [--chunks 100000 300000 1000000] [--queries 200] [--json]

For each --chunks size, in a fresh embedded PostgreSQL: loads the synthetic
corpus of bench/hnsw.py (Zipf-distributed words, 100 a chunk; SciFact-shaped
vectors) through ChunkStore.upsert, builds the HNSW index, compacts the
keyword index (what every retriever replica does in the background), then
times one client, top_k 10, at the retriever's defaults:

- dense search (HNSW);
- keyword search, the pruned leg the service runs (keyword_search.py);
- keyword search, exhaustive: every posting of every query lexeme scored,
  the reference the pruned leg must equal (keyword.search_exhaustively);
- hybrid search (both legs at candidate depth, fused).

Every query runs through every configuration before the next query, in a
rotating order, so load from other jobs falls on all of them alike and the
ratios hold where absolute times do not. An untimed pass over the same queries
records what the pruned leg read (blocks, postings, chunks scored exactly)
at depth top_k and at the hybrid's candidate depth, and checks its answers
against the exhaustive leg's.

On disk: the keyword index (blocks with their indexes, and each chunk's
lexemes) against the chunks, their vectors and the HNSW index.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict
from typing import Any

import asyncpg

from benchkit import defaults
from benchkit.cli import parser
from benchkit.machine import describe, load_average
from benchkit.output import log
from benchkit.postgres import embedded_postgres
from benchkit.store import connect_store
from hnsw_bench.dataset import TOP_K, Dataset, synthesize
from hnsw_bench.loading import LOADERS, NAMESPACE, load, require_stop_words
from hnsw_bench.searching import WARMUP_QUERIES, Search, measure
from services.retriever.hybrid import SearchMode
from services.retriever.keyword import Bm25, search_exhaustively
from services.retriever.keyword_search import KeywordLeg, search_keyword
from services.retriever.store import ChunkStore

DENSE = "dense"
KEYWORD = "keyword, pruned"
EXHAUSTIVE = "keyword, exhaustive"
HYBRID = "hybrid"


def searches_of(store: ChunkStore, conn: asyncpg.Connection, dataset: Dataset) -> dict[str, Search]:
    def mode(search_mode: SearchMode) -> Search:
        return lambda q: store.search(
            NAMESPACE,
            TOP_K,
            mode=search_mode,
            embedding=dataset.query_vectors[q],
            text=dataset.query_texts[q],
        )

    async def exhaustive(q: int) -> list[Any]:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await search_exhaustively(
                conn, NAMESPACE, dataset.query_texts[q], TOP_K, text_search_config="english", bm25=_bm25()
            )
        return []

    return {
        DENSE: mode(SearchMode.DENSE),
        KEYWORD: mode(SearchMode.KEYWORD),
        EXHAUSTIVE: exhaustive,
        HYBRID: mode(SearchMode.HYBRID),
    }


def _bm25() -> Bm25:
    return Bm25(defaults.BM25_K1, defaults.BM25_B)


async def pruning_profile(
    conn: asyncpg.Connection, dataset: Dataset, queries: int, depth: int
) -> dict[str, Any]:
    """What the pruned leg read per query at `depth`, and whether it matched the exhaustive leg every time."""
    legs: list[KeywordLeg] = []
    mismatches = 0
    for q in range(queries):
        text = dataset.query_texts[q]
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            leg = await search_keyword(
                conn, NAMESPACE, text, depth, text_search_config="english", bm25=_bm25()
            )
            expected = await search_exhaustively(
                conn, NAMESPACE, text, depth, text_search_config="english", bm25=_bm25()
            )
        scores = [s for _, s in expected]
        if len(scores) != len(leg.scores) or any(
            abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(leg.scores, scores, strict=True)
        ):
            mismatches += 1
        legs.append(leg)
    total_postings = [await _postings_of(conn, dataset.query_texts[q]) for q in range(queries)]
    return {
        "depth": depth,
        "postings_read_median": statistics.median(leg.postings_read for leg in legs),
        "postings_total_median": statistics.median(total_postings),
        "blocks_read_median": statistics.median(leg.blocks_read for leg in legs),
        "blocks_total_median": statistics.median(leg.blocks for leg in legs),
        "chunks_scored_median": statistics.median(leg.chunks_scored for leg in legs),
        "terminated_early_share": sum(leg.terminated_early for leg in legs) / len(legs),
        "terms_median": statistics.median(leg.terms for leg in legs),
        "mismatches": mismatches,
    }


async def _postings_of(conn: asyncpg.Connection, text: str) -> int:
    """Postings of the query's lexemes: what the exhaustive leg reads."""
    return int(
        await conn.fetchval(
            "SELECT coalesce(sum(postings), 0) FROM rag_keyword_blocks WHERE namespace = $1"
            " AND lexeme = ANY (tsvector_to_array(to_tsvector('english', $2)))",
            NAMESPACE,
            text,
        )
    )


async def run_size(chunks: int, queries: int) -> dict[str, Any]:
    started = time.perf_counter()
    dataset = synthesize(chunks, queries + WARMUP_QUERIES)
    log(f"synthesized {chunks} chunks in {time.perf_counter() - started:.0f} s")
    async with embedded_postgres("rag-bench-keyword-") as dsn:
        store = await connect_store(dsn, max_pool_size=LOADERS)
        conn = await asyncpg.connect(dsn)
        try:
            await require_stop_words(conn)
            loaded = await load(store, conn, dataset, keep_index=False)
            searches = searches_of(store, conn, dataset)
            log(f"searching: {queries} queries x {len(searches)} configurations")
            timings = await measure(searches, queries, [set() for _ in range(queries)], set())
            log("profiling the pruned leg against the exhaustive one")
            profiles = [
                await pruning_profile(conn, dataset, queries, depth)
                for depth in (TOP_K, defaults.CANDIDATE_DEPTH)
            ]
        finally:
            await conn.close()
            await store.close()
    return {
        "chunks": chunks,
        "load": asdict(loaded),
        "timings": {label: asdict(t) for label, t in timings.items()},
        "pruning": profiles,
        "seconds": time.perf_counter() - started,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every size in turn; without --json each size's tables print as soon as it is done."""
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "queries": args.queries,
        "top_k": TOP_K,
        "candidate_depth": defaults.CANDIDATE_DEPTH,
        "sizes": [],
    }
    for chunks in args.chunks:
        result["sizes"].append(await run_size(chunks, args.queries))
        result["machine"] = f"{describe()}, load average {load_average()} at the end"
        if not args.json:
            report({**result, "sizes": result["sizes"][-1:]})
    return result


def report(result: dict[str, Any]) -> None:
    print(
        f"Keyword leg at scale: {result['queries']} queries, top_k {result['top_k']}, one client, "
        f"hybrid depth {result['candidate_depth']} ({result['date']})\nmachine: {result['machine']}\n"
    )
    print(
        "| chunks | dense p50 | keyword p50 | hybrid p50 | keyword / dense | hybrid / dense "
        "| exhaustive keyword p50 | keyword index on disk | chunks + vectors + HNSW |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size in result["sizes"]:
        t = size["timings"]
        dense, keyword, hybrid = t[DENSE]["p50_ms"], t[KEYWORD]["p50_ms"], t[HYBRID]["p50_ms"]
        loaded = size["load"]
        print(
            f"| {size['chunks']:,} | {dense:.1f} ms | {keyword:.1f} ms | {hybrid:.1f} ms "
            f"| {keyword / dense:.2f}x | {hybrid / dense:.2f}x | {t[EXHAUSTIVE]['p50_ms']:.1f} ms "
            f"| {loaded['postings_mb']:,.0f} MB | {loaded['table_mb'] + loaded['hnsw_mb']:,.0f} MB |"
        )
    print(
        "\n| chunks | depth | query lexemes | postings read / of the query's | blocks read / of the query's "
        "| chunks scored exactly | stopped early | answers equal to exhaustive |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in result["sizes"]:
        for p in size["pruning"]:
            print(
                f"| {size['chunks']:,} | {p['depth']} | {p['terms_median']:.0f} "
                f"| {p['postings_read_median']:,.0f} / {p['postings_total_median']:,.0f} "
                f"| {p['blocks_read_median']:,.0f} / {p['blocks_total_median']:,.0f} "
                f"| {p['chunks_scored_median']:,.0f} | {p['terminated_early_share']:.0%} "
                f"| {result['queries'] - p['mismatches']} of {result['queries']} |"
            )
    print("\nmedians per query. Load and compaction:")
    for size in result["sizes"]:
        loaded = size["load"]
        print(
            f"  {size['chunks']:,} chunks: upsert {loaded['upsert_s']:.0f} s, HNSW build "
            f"{loaded['index_build_s']:.0f} s, compaction {loaded['compact_s']:.0f} s; "
            f"{loaded['postings']:,} postings of {loaded['lexemes']:,} lexemes "
            f"in {loaded['blocks']:,} blocks "
            f"({loaded['blocks_mb']:,.0f} MB) + chunk lexemes {loaded['chunk_lexemes_mb']:,.0f} MB; "
            f"chunks {loaded['table_mb']:,.0f} MB, HNSW {loaded['hnsw_mb']:,.0f} MB; "
            f"{size['seconds'] / 60:.1f} minutes"
        )


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--chunks", type=int, nargs="+", default=[100_000])
    arguments.add_argument("--queries", type=int, default=200)
    arguments.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = arguments.parse_args()
    if min(args.chunks) < TOP_K or args.queries < 1:
        arguments.error(f"--chunks must be at least {TOP_K} and --queries at least 1")
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
