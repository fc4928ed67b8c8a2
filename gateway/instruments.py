"""The gateway's own metrics (its RPC and stage metrics come from services.common).

Ingestion throughput is rate() of the two ingest counters in PromQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from opentelemetry import metrics

from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2
from rag.retriever.v1 import retriever_pb2

_meter = metrics.get_meter(__name__)

ingest_documents = _meter.create_counter(
    "rag.gateway.ingest.documents",
    unit="{document}",
    description="Documents ingested, by status: created, updated or unchanged (skipped by content hash).",
)
ingest_chunks = _meter.create_counter(
    "rag.gateway.ingest.chunks",
    unit="{chunk}",
    description="Chunks of the ingested documents, by their document's status.",
)
answers = _meter.create_counter(
    "rag.gateway.answers", unit="{answer}", description="Answers given, by outcome: answered or no_answer."
)


def _suffix(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def record_ingest(results: Sequence[gateway_pb2.DocumentResult]) -> None:
    for result in results:
        status = {"status": _suffix(retriever_pb2.UpsertStatus.Name(result.status), "UPSERT_STATUS_")}
        ingest_documents.add(1, status)
        ingest_chunks.add(result.chunk_count, status)


shed = _meter.create_counter(
    "rag.gateway.shed",
    unit="{call}",
    description="Calls refused with RESOURCE_EXHAUSTED because GATEWAY_MAX_IN_FLIGHT were in flight.",
)


def record_shed() -> None:
    shed.add(1)


answer_cache = _meter.create_counter(
    "rag.gateway.answer_cache.lookups",
    unit="{lookup}",
    description="Answer cache lookups, by result: hit or miss; hits by kind: exact or semantic.",
)

# How a cached answer was found: by its exact key, or by a similar question's embedding.
CacheHitKind = Literal["exact", "semantic"]


def record_answer_cache(hit_kind: CacheHitKind | None) -> None:
    """One lookup; hit_kind None for a miss."""
    if hit_kind is None:
        answer_cache.add(1, {"result": "miss"})
    else:
        answer_cache.add(1, {"result": "hit", "kind": hit_kind})


def record_answer(response: gateway_pb2.AskResponse) -> None:
    outcome = _suffix(generator_pb2.AnswerOutcome.Name(response.outcome), "ANSWER_OUTCOME_")
    answers.add(1, {"outcome": outcome})
