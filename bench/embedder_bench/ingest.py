"""Ingestion end to end: the whole stack ingesting SciFact documents through IngestDocuments."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass

import grpc
import psutil

from benchkit import rpc
from benchkit.cpu import BENCH, CpuMeter, Tally
from benchkit.output import log
from benchkit.stack import running_stack
from embedder_bench.ceiling import Reference
from embedder_bench.settings import SERVICE_ENV
from embedder_bench.texts import Texts
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from rag_cli.beir import CorpusDocument
from rag_cli.stack import Stack

DOCUMENTS_PER_CALL = 25
INGEST_CALLERS = 2


@dataclass(frozen=True)
class Ingested:
    chunks: Tally
    ceiling: Tally
    stage_ms: dict[str, float]  # the gateway's stage timings, summed over the calls


def _document(document: CorpusDocument) -> gateway_pb2.Document:
    return gateway_pb2.Document(id=document.id, title=document.title, text=document.text)


async def ingest_calls(stack: Stack, texts: Texts, namespace: str, reference: Reference) -> Ingested:
    """INGEST_CALLERS calls of DOCUMENTS_PER_CALL documents at a time, in rounds between ceiling slices."""
    processes = {
        name: psutil.Process(stack.process(name).pid) for name in ("embedder", "gateway", "retriever")
    }
    tally = Tally()
    stage_ms: dict[str, float] = defaultdict(float)
    created = 0
    async with rpc.channel(stack.gateway_target) as opened:
        gateway = gateway_pb2_grpc.GatewayServiceStub(opened)

        async def call(documents: list[CorpusDocument], into: str) -> gateway_pb2.IngestDocumentsResponse:
            request = gateway_pb2.IngestDocumentsRequest(
                namespace=into, documents=[_document(d) for d in documents]
            )
            return await gateway.IngestDocuments(request, timeout=600)

        # Untimed: the first ingest opens the retriever's pool and the embedder's first stream.
        await call(texts.warmup_documents, f"{namespace}-warmup")

        async def one_round(documents: list[CorpusDocument]) -> None:
            nonlocal created
            meter = CpuMeter({**processes, "bench": BENCH})
            started = time.perf_counter()
            responses = await asyncio.gather(
                *(
                    call(documents[i : i + DOCUMENTS_PER_CALL], namespace)
                    for i in range(0, len(documents), DOCUMENTS_PER_CALL)
                )
            )
            seconds = time.perf_counter() - started
            results = [r for response in responses for r in response.results]
            created += sum(1 for r in results if r.status == retriever_pb2.UPSERT_STATUS_CREATED)
            tally.add(sum(r.chunk_count for r in results), seconds, meter.stop())
            for response in responses:
                for timing in response.timings:
                    stage_ms[timing.stage] += timing.duration_ms

        per_round = INGEST_CALLERS * DOCUMENTS_PER_CALL
        rounds = [
            lambda part=texts.documents[start : start + per_round]: one_round(part)
            for start in range(0, len(texts.documents), per_round)
        ]
        ceiling = await reference.alternate(rounds)
    if created != len(texts.documents):
        raise RuntimeError(f"{created} of {len(texts.documents)} documents created in a fresh namespace")
    return Ingested(tally, ceiling, dict(stage_ms))


def measure_ingest(texts: Texts, reference: Reference) -> Ingested | str:
    """The ingestion's figures, or what went wrong."""
    namespace = f"bench-embedder-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        with running_stack("rag-bench-embedder-stack-", SERVICE_ENV) as stack:
            log("  stack up; ingesting")
            return asyncio.run(ingest_calls(stack, texts, namespace, reference))
    except (grpc.RpcError, RuntimeError, TimeoutError) as error:
        message = rpc.detail(error)
        log(f"  ingestion failed: {message}")
        return f"{type(error).__name__}: {message}"
