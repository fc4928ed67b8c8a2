"""The HNSW benchmark's report, from the result bench/hnsw.py prints as JSON with --json."""

from __future__ import annotations

from typing import Any


def report(result: dict[str, Any]) -> None:
    loaded = result["load"]
    build = (
        "grown during the load"
        if loaded["index_build_s"] is None
        else f"built after the load in {loaded['index_build_s']:.0f} s"
    )
    print(
        f"HNSW and hybrid search, {result['chunks']:,} chunks of {result['dimension']} dimensions in one "
        f"namespace, {result['queries']} queries, top_k {result['top_k']}, one client ({result['date']})\n"
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
