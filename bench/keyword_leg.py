"""Retrieval quality of the dense, keyword and hybrid modes on SciFact (train split).

    python bench/keyword_leg.py [--sweep] [--data /work/shared/datasets/scifact] [--cache DIR]

Loads the SciFact corpus into a fresh embedded PostgreSQL through ChunkStore,
chunked like the gateway does (the model's tokenizer, 200 tokens, 40 overlap,
the title as the document title) and embedded with the shipped model, then
runs every train query in each mode and prints nDCG@10 and Recall@100 side by
side, with the time per search. Each search asks for 100 chunks, the most the
API returns; chunk hits are folded into documents (a document ranks where its
best chunk ranks), so Recall@100 counts the documents among those 100 chunks.
Relevance is binary, from the qrels.

Chunks and embeddings are cached in --cache (default $TMPDIR/rag-bench-scifact),
so the model runs once (half an hour on two busy cores); later runs take about
two minutes, or twelve with --sweep, which adds the keyword alternatives (a
ts_rank baseline, BM25 without titles, a k1 x b grid) and the fusion grid the
server defaults were chosen from. The data is for measurement only: nothing
of it belongs in the repository.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import asyncpg

from benchkit.cli import DEFAULT_SCIFACT, parser
from benchkit.postgres import embedded_postgres
from benchkit.store import connect_store
from keyword_leg_bench.corpus import SPLIT, Corpus, load_corpus
from keyword_leg_bench.loading import load, print_sizes
from keyword_leg_bench.prepared import Prepared, prepare
from keyword_leg_bench.runs import POOL_SIZE, run
from keyword_leg_bench.scores import print_header, print_row, score
from keyword_leg_bench.sweeps import sweep_fusion, sweep_keyword, time_statistics
from services.retriever.hybrid import SearchMode

NAMESPACE = "scifact"
NO_TITLES = "scifact-no-titles"


async def measure(corpus: Corpus, prepared: Prepared, *, sweep: bool) -> None:
    async with embedded_postgres("rag-bench-pg-") as dsn:
        store = await connect_store(dsn, max_pool_size=POOL_SIZE)
        conn = await asyncpg.connect(dsn)
        try:
            seconds = await load(store, NAMESPACE, corpus, prepared, titles=True)
            print(f"loaded {len(corpus.texts)} documents in {seconds:.0f} s", flush=True)
            if sweep:
                seconds = await load(store, NO_TITLES, corpus, prepared, titles=False)
                print(f"loaded them again without titles in {seconds:.0f} s", flush=True)
            await conn.execute("VACUUM ANALYZE")
            await print_sizes(conn)

            print_header(f"SciFact {SPLIT}, {len(corpus.queries)} queries")
            for label, mode in (("dense", SearchMode.DENSE), ("keyword", SearchMode.KEYWORD)):
                print_row(label, score(await run(store, NAMESPACE, corpus, prepared, mode), corpus.qrels))
            fusion = store.default_fusion
            print_row(
                f"hybrid (rrf_k {fusion.rrf_k:g}, weights {fusion.dense_weight:g}/{fusion.keyword_weight:g}, "
                f"depth {fusion.candidate_depth})",
                score(await run(store, NAMESPACE, corpus, prepared, SearchMode.HYBRID), corpus.qrels),
            )
            if sweep:
                await sweep_keyword(dsn, conn, corpus, prepared, (NAMESPACE, NO_TITLES))
                await sweep_fusion(store, NAMESPACE, corpus, prepared)
                await time_statistics(conn, NAMESPACE)
        finally:
            await conn.close()
            await store.close()


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--data", type=Path, default=DEFAULT_SCIFACT)
    arguments.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rag-bench-scifact")
    arguments.add_argument("--sweep", action="store_true", help="also the alternatives and parameter grids")
    arguments.add_argument("--prepare-only", action="store_true", help="chunk and embed, then stop")
    args = arguments.parse_args()
    corpus = load_corpus(args.data)
    prepared = prepare(corpus, args.cache)
    print(f"{len(corpus.texts)} documents, {len(prepared.chunks)} chunks, {len(prepared.query_ids)} queries")
    if not args.prepare_only:
        asyncio.run(measure(corpus, prepared, sweep=args.sweep))


if __name__ == "__main__":
    main()
