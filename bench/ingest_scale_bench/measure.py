"""The measured rounds: the corpus ingested through one configuration's gateway into a fresh namespace,
the configurations taking turns, with the cores each process used and the EmbedStream calls each
replica took."""

from __future__ import annotations

import itertools
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from benchkit.output import log
from ingest_scale_bench.corpus import Corpus
from ingest_scale_bench.cpu import Cores, CpuMeter
from ingest_scale_bench.deployment import ONE, TWO, Deployment, Setup
from rag.gateway.v1 import gateway_pb2
from rag.retriever.v1 import retriever_pb2
from rag_cli.bulk import send_batches
from rag_client import AsyncRagClient

# A call ingesting a few hundred chunks on a shared core takes tens of seconds; a stuck one fails the run.
CALL_TIMEOUT_S = 600.0
STREAMS_METRIC = "rag_embedder_rpc_requests_total"
WARMUP_ATTEMPTS = 10


@dataclass(frozen=True)
class Round:
    setup: Setup
    chunks: int
    seconds: float
    cores: Cores
    streams: dict[str, int]  # replica -> EmbedStream calls it took during the round

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds


def embed_streams(deployment: Deployment, replica: str) -> int:
    """EmbedStream calls the replica has finished since it started, from its /metrics."""
    with urllib.request.urlopen(deployment.metrics_url(replica), timeout=10) as reply:
        text = reply.read().decode()
    return round(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == STREAMS_METRIC and sample.labels.get("rpc_method") == "EmbedStream"
        )
    )


def _batches(
    documents: Sequence[gateway_pb2.Document], per_call: int
) -> Iterator[list[gateway_pb2.Document]]:
    for start in range(0, len(documents), per_call):
        yield list(documents[start : start + per_call])


async def _ingest(
    client: AsyncRagClient,
    namespace: str,
    documents: Sequence[gateway_pb2.Document],
    concurrency: int,
    per_call: int,
) -> list[gateway_pb2.DocumentResult]:
    responses = await send_batches(client, namespace, _batches(documents, per_call), concurrency)
    return [result for response in responses for result in response.results]


async def warm_up(deployment: Deployment, corpus: Corpus, clients: dict[str, AsyncRagClient]) -> None:
    """Untimed ingests through each gateway, until every replica behind it has taken a stream.

    The first ingest opens the retriever's pool and the gateway's channels; round_robin picks only
    among replicas it is connected to, and a second connection may come up after the first calls.
    """
    for setup in (ONE, TWO):
        for attempt in itertools.count(1):
            before = {replica: embed_streams(deployment, replica) for replica in setup.replicas}
            await _ingest(clients[setup.gateway], f"warmup-{setup.gateway}-{attempt}", corpus.warmup, 2, 2)
            took = {
                replica: embed_streams(deployment, replica) - before[replica] for replica in setup.replicas
            }
            if all(took.values()):
                break
            if attempt == WARMUP_ATTEMPTS:
                raise RuntimeError(
                    f"{setup.label}: after {attempt} warm-up ingests, streams per replica {took}"
                )


async def one_round(
    deployment: Deployment,
    setup: Setup,
    client: AsyncRagClient,
    corpus: Corpus,
    namespace: str,
    concurrency: int,
    per_call: int,
) -> Round:
    groups = {
        **{replica: [deployment.process(replica)] for replica in setup.replicas},
        "gateway": [deployment.process(setup.gateway)],
        "retriever": [deployment.process("retriever")],
        "postgres": deployment.postgres(),
    }
    replicas = tuple(deployment.cores)
    before = {replica: embed_streams(deployment, replica) for replica in replicas}
    meter = CpuMeter(groups)
    started = time.perf_counter()
    results = await _ingest(client, namespace, corpus.documents, concurrency, per_call)
    seconds = time.perf_counter() - started
    cores = meter.stop()
    streams = {replica: embed_streams(deployment, replica) - before[replica] for replica in replicas}
    created = sum(1 for result in results if result.status == retriever_pb2.UPSERT_STATUS_CREATED)
    if created != len(corpus.documents):
        raise RuntimeError(
            f"{setup.label}: {created} of {len(corpus.documents)} documents created in {namespace}"
        )
    chunks = sum(result.chunk_count for result in results)
    measured = Round(setup, chunks, seconds, cores, streams)
    log(f"  {setup.label}: {chunks} chunks in {seconds:.1f} s, {measured.rate:.1f}/s, streams {streams}")
    return measured


async def measure(
    deployment: Deployment, corpus: Corpus, rounds: int, concurrency: int, per_call: int
) -> list[Round]:
    """`rounds` rounds of each configuration, taking turns (1, 2, then 2, 1, ...): drifting load
    falls on both alike."""
    run = time.strftime("%H%M%S")
    measured: list[Round] = []
    clients = {
        setup.gateway: AsyncRagClient(deployment.target(setup.gateway), timeout_s=CALL_TIMEOUT_S)
        for setup in (ONE, TWO)
    }
    try:
        await warm_up(deployment, corpus, clients)
        for number in range(rounds):
            for setup in (ONE, TWO) if number % 2 == 0 else (TWO, ONE):
                namespace = f"scale-{run}-{setup.gateway}-{number}"
                client = clients[setup.gateway]
                measured.append(
                    await one_round(deployment, setup, client, corpus, namespace, concurrency, per_call)
                )
    finally:
        for client in clients.values():
            await client.close()
    return measured
