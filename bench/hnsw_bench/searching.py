"""Timing searches: every query through every configuration in a rotating order, with recall@10."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from benchkit.output import log
from hnsw_bench.dataset import CHUNKS_PER_DOCUMENT, TOP_K
from rag_cli.metrics import percentile
from services.retriever.store.records import Hit

WARMUP_QUERIES = 20

# A configuration's search of query number q.
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
            log(f"  {query + 1} of {queries} queries")
    return {
        label: Timings(
            label,
            float(np.mean(recalls[label])) if label in with_recall else None,
            percentile(latencies[label], 50),
            percentile(latencies[label], 95),
        )
        for label in labels
    }
