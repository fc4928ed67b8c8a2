"""The retriever's own metrics (its RPC and stage metrics come from services.common)."""

from __future__ import annotations

from opentelemetry import metrics

from services.retriever.rerank import RerankerIdentity

_meter = metrics.get_meter(__name__)

search_hits = _meter.create_histogram(
    "rag.retriever.search.hits",
    unit="{chunk}",
    description="Chunks a search returned (after rerank), by search.mode.",
    explicit_bucket_boundaries_advisory=(0, 1, 2, 3, 5, 10, 20, 50, 100),
)

# Prometheus' "info" pattern: always 1, the model in the attributes, so a dashboard
# or an alert can tell which reranker each replica serves (and spot a mixed rollout).
reranker_info = _meter.create_gauge(
    "rag.retriever.reranker.info",
    description="1 for the rerank model this replica serves: model, backend, file and sha256 as attributes.",
)


def record_reranker(identity: RerankerIdentity) -> None:
    reranker_info.set(
        1,
        {
            "model": identity.model,
            "backend": identity.backend,
            "file": identity.file,
            "sha256": identity.sha256,
            "max_length": identity.max_length,
        },
    )
