"""The retriever's own metrics (its RPC and stage metrics come from services.common)."""

from __future__ import annotations

from opentelemetry import metrics

_meter = metrics.get_meter(__name__)

search_hits = _meter.create_histogram(
    "rag.retriever.search.hits",
    unit="{chunk}",
    description="Chunks a search returned (after rerank), by search.mode.",
    explicit_bucket_boundaries_advisory=(0, 1, 2, 3, 5, 10, 20, 50, 100),
)
