"""HNSW recall and latency at scale, and what the keyword leg costs on top of dense search.

    python bench/hnsw.py [--chunks 100000] [--queries 200] [--keep-index] [--json]

Loads --chunks synthetic chunks (10 per document) into one namespace of a
fresh embedded PostgreSQL through ChunkStore.upsert, then times
ChunkStore.search, one client, top_k 10:

- dense search at several hnsw.ef_search values, with recall@10 against the
  exact top 10 (numpy, cosine, over the same float32 vectors), and the exact
  search itself: the same statement with index scans off, i.e. a sequential
  scan (its recall says the two exact answers agree);
- dense, keyword and hybrid search at the retriever's defaults
  (services/retriever/config.py), with the ratio of each to dense.

Every query runs through every configuration before the next query, in a
rotating order, so load from other jobs on the machine falls on all of them
alike and the ratios hold even when the absolute times do not.

The data is synthetic, seeded, and built to look like MiniLM embeddings of
SciFact (bench/keyword_leg.py), not like uniform noise, on which HNSW recall
would say little: topics of Zipf-distributed popularity, documents around
topics, chunks around documents, all with a decaying spectrum (about 180 of
384 principal directions hold 90 % of the variance; SciFact: 171) and a shared
offset (cosine of a random pair about 0.1, as there). A query is a noisy copy
of one document's centre, not a stored vector. Mean cosine of a query to its
nearest and 10th nearest chunk: 0.65 and 0.54 at 10k chunks, 0.66 and 0.55 at
100k; SciFact's queries and 12k chunks: 0.65 and 0.50. The header prints
these figures for the run.

Text is words drawn from a Zipf distribution (s = 1) over 40 English stop
words (the commonest ranks; to_tsvector drops them, as it drops real ones)
and 20,000 pseudo-words, so BM25 posting lists have a natural skew: the
commonest lexeme is in about a fifth of the chunks, the rarest in about one
in 2,000. 100 words a chunk give some 58 postings each (SciFact: 59).

By default the HNSW index is dropped before the load and rebuilt after it
from its own definition (the migration's m and ef_construction), which saves
time; --keep-index loads with the index in place, growing it one insert at a
time as the service does. 100k chunks take about four minutes on two busy
cores, half of it loading.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from hnsw_bench.dataset import TOP_K, Dataset, exact_top_k, similarity_profile, synthesize
from hnsw_bench.loading import LOADERS, NAMESPACE, load, require_stop_words
from hnsw_bench.report import report
from hnsw_bench.searching import WARMUP_QUERIES, Search, measure
from services.retriever.hybrid import SearchMode
from services.retriever.store import ChunkStore

# The ef_search values dense search is timed at: a grid, and the retriever's default.
EF_SEARCHES = sorted({10, 20, 40, 100, 200, defaults.DEFAULT_EF_SEARCH})
EXACT = "dense, exact (sequential scan)"
KEYWORD = "keyword (BM25)"
HYBRID = "hybrid (RRF)"


def _dense_label(ef_search: int) -> str:
    return f"dense, ef_search {ef_search}"


def searches_of(store: ChunkStore, exact: ChunkStore, dataset: Dataset) -> dict[str, Search]:
    """Dense search at each ef_search and exact, then keyword and hybrid at the store's defaults."""

    def dense(ef_search: int | None, on: ChunkStore = store) -> Search:
        return lambda q: on.search(
            NAMESPACE, TOP_K, mode=SearchMode.DENSE, embedding=dataset.query_vectors[q], ef_search=ef_search
        )

    def with_text(mode: SearchMode) -> Search:
        return lambda q: store.search(
            NAMESPACE, TOP_K, mode=mode, embedding=dataset.query_vectors[q], text=dataset.query_texts[q]
        )

    searches = {_dense_label(ef): dense(ef) for ef in EF_SEARCHES}
    searches[EXACT] = dense(None, exact)
    searches[KEYWORD] = with_text(SearchMode.KEYWORD)
    searches[HYBRID] = with_text(SearchMode.HYBRID)
    return searches


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    total = args.queries + WARMUP_QUERIES
    dataset = synthesize(args.chunks, total)
    truth = exact_top_k(dataset)
    top1, top10 = similarity_profile(dataset)
    log(f"synthesized {args.chunks} chunks and {total} queries in {time.perf_counter() - started:.0f} s")

    async with embedded_postgres("rag-bench-hnsw-") as dsn:
        store = await connect_store(dsn, max_pool_size=LOADERS)
        # The same statements with index scans off: dense search becomes a sequential scan.
        exact = await connect_store(dsn, max_pool_size=1, server_settings={"enable_indexscan": "off"})
        conn = await asyncpg.connect(dsn)
        try:
            await require_stop_words(conn)
            loaded = await load(store, conn, dataset, keep_index=args.keep_index)
            versions = await conn.fetchrow(
                "SELECT current_setting('server_version') AS postgres,"
                " (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector"
            )
            searches = searches_of(store, exact, dataset)
            log(f"searching: {args.queries} queries x {len(searches)} configurations")
            dense_labels = {label for label in searches if label.startswith("dense")}
            timings = await measure(searches, args.queries, truth, dense_labels)
        finally:
            await conn.close()
            await exact.close()
            await store.close()

    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{describe()}, load average {load_average()} at the end",
        "postgres": versions["postgres"],
        "pgvector": versions["pgvector"],
        "chunks": args.chunks,
        "dimension": defaults.EMBEDDING_DIMENSION,
        "queries": args.queries,
        "top_k": TOP_K,
        "hnsw_m": defaults.HNSW_M,
        "hnsw_ef_construction": defaults.HNSW_EF_CONSTRUCTION,
        "default_ef_search": defaults.DEFAULT_EF_SEARCH,
        "candidate_depth": defaults.CANDIDATE_DEPTH,
        "rrf_k": defaults.RRF_K,
        "query_similarity_top1": top1,
        "query_similarity_top10": top10,
        "load": asdict(loaded),
        "ef_search": [asdict(timings[_dense_label(ef)]) | {"ef_search": ef} for ef in EF_SEARCHES],
        "exact": asdict(timings[EXACT]),
        "dense_default": asdict(timings[_dense_label(defaults.DEFAULT_EF_SEARCH)]),
        "keyword": asdict(timings[KEYWORD]),
        "hybrid": asdict(timings[HYBRID]),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--chunks", type=int, default=100_000)
    arguments.add_argument("--queries", type=int, default=200)
    arguments.add_argument(
        "--keep-index", action="store_true", help="load with the HNSW index in place, as the service does"
    )
    arguments.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = arguments.parse_args()
    if args.chunks < TOP_K or args.queries < 1:
        arguments.error(f"--chunks must be at least {TOP_K} and --queries at least 1")
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
