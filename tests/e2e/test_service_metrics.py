"""Every service's Prometheus endpoint moves with the calls made through the gateway.

The session stack serves each service's /metrics on a port of its own
(tests/conftest.py). Other tests share the stack, so every check compares two
scrapes, before and after this module's calls; nothing else calls the stack in
between, so what the gateway counts is exactly what was called. Token counts
need an LLM that reports usage: a generator of its own on the openai backend,
in front of the fake chat-completions server, is scraped the same way.
"""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2, generator_pb2_grpc
from rag_cli.stack import Stack, free_port
from services.common.registry import DEFAULT_PORTS, GENERATOR
from tests.conftest import THREE_TOPICS, sample_document
from tests.e2e.replicas import Replicas
from tests.generator.test_openai_backend import FakeChatServer, Reply, chunk, completion
from tests.internal_calls import signed_channel

REPO = Path(__file__).resolve().parents[2]
MODEL = "fake-model"
# What the fake LLM reports for the openai generator's Generate, then its GenerateStream.
LLM_USAGE = [
    {"prompt_tokens": 211, "completion_tokens": 13},
    {"prompt_tokens": 187, "completion_tokens": 29},
]
GENERATE = generator_pb2.GenerateRequest(
    question="When do backups run?",
    context=[
        generator_pb2.ContextChunk(
            document_id="runbook", title="Backups", text="Backups run nightly at 02:00 UTC.", score=0.9
        )
    ],
)
Labels = frozenset[tuple[str, str]]


class Scrape:
    """One /metrics page: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        families = list(text_string_to_metric_families(text))
        self.types = {family.name: family.type for family in families}
        self.samples: dict[tuple[str, Labels], float] = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in families
            for sample in family.samples
        }

    def has(self, name: str, **labels: str) -> bool:
        wanted = set(labels.items())
        return any(n == name and wanted <= series for n, series in self.samples)

    def total(self, name: str, **labels: str) -> float:
        """The sum over the series of `name` carrying (at least) these labels."""
        wanted = set(labels.items())
        return sum(v for (n, series), v in self.samples.items() if n == name and wanted <= series)


# Before and after the calls.
Scrapes = tuple[dict[str, Scrape], dict[str, Scrape]]


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return Scrape(reply.read().decode())


def scrape_all(stack: Stack) -> dict[str, Scrape]:
    return {service: scrape(stack.metrics_url(service)) for service in DEFAULT_PORTS}


@pytest.fixture(scope="module")
def scrapes(stack: Stack, gateway: gateway_pb2_grpc.GatewayServiceStub) -> Scrapes:
    """Scrapes before and after a few calls of every kind, one of them refused."""
    before = scrape_all(stack)
    namespace = "metrics-test"
    # Other tests ingest the samples too, so their chunks' embeddings may come from the
    # cache: a text seen nowhere else makes sure the model runs a batch.
    unseen = gateway_pb2.Document(
        id="unseen", text=f"Probe {uuid.uuid4()}: metrics must move when text is embedded."
    )
    ingest = gateway_pb2.IngestDocumentsRequest(
        namespace=namespace, documents=[*(sample_document(name) for name in THREE_TOPICS), unseen]
    )
    gateway.IngestDocuments(ingest)
    gateway.IngestDocuments(ingest)  # unchanged: skipped by content hash
    gateway.Search(gateway_pb2.SearchRequest(namespace=namespace, query="nightly base backup"))
    # Past the answer cache, so the question is embedded and answered every time.
    question = gateway_pb2.AskRequest(
        namespace=namespace, question="How long are backups kept?", skip_cache=True
    )
    gateway.Ask(question)
    gateway.Ask(question)  # the same question: its embedding comes from the embedder's cache
    for _ in gateway.AskStream(gateway_pb2.AskStreamRequest(request=question)):
        pass
    repeated = gateway_pb2.AskRequest(namespace=namespace, question="Who is on call this week?")
    gateway.Ask(repeated)
    gateway.Ask(repeated)  # answered from the answer cache
    with pytest.raises(grpc.RpcError) as refused:
        gateway.Search(gateway_pb2.SearchRequest(namespace=namespace, query=""))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return before, scrape_all(stack)


@pytest.fixture(scope="module")
def openai_scrapes(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrapes]:
    """A generator's scrapes before and after a Generate and a GenerateStream, with LLM_USAGE reported."""
    answered, streamed = LLM_USAGE
    llm = FakeChatServer()
    llm.replies = [
        Reply(body=completion("Backups run nightly [1].", **answered)),
        Reply(events=[chunk("Backups run "), chunk("nightly [1]."), chunk(usage=_with_total(streamed))]),
    ]
    llm.start()
    metrics_port = free_port()
    processes = Replicas(stack, tmp_path_factory.mktemp("generator-tokens"))
    try:
        processes.start_openai_generator(
            "generator-tokens",
            llm.base_url,
            GENERATOR_OPENAI_MODEL=MODEL,
            OTEL_METRICS_EXPORTER="prometheus",
            OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
            OTEL_EXPORTER_PROMETHEUS_PORT=str(metrics_port),
        )
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        before = {"generator": scrape(url)}
        with signed_channel(stack, GENERATOR, target=processes.target("generator-tokens")) as channel:
            generator = generator_pb2_grpc.GeneratorServiceStub(channel)
            generator.Generate(GENERATE, timeout=60)
            for _ in generator.GenerateStream(
                generator_pb2.GenerateStreamRequest(request=GENERATE), timeout=60
            ):
                pass
        yield before, {"generator": scrape(url)}
    finally:
        processes.stop()
        llm.stop()


def _with_total(usage: dict[str, int]) -> dict[str, int]:
    return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}


def grew(scrapes: Scrapes, service: str, name: str, **labels: str) -> float:
    before, after = scrapes
    return after[service].total(name, **labels) - before[service].total(name, **labels)


def test_gateway_counts_rpcs_by_method_and_status(
    scrapes: Scrapes,
) -> None:
    for method, status, calls in [
        ("IngestDocuments", "OK", 2),
        ("Search", "OK", 1),
        ("Ask", "OK", 4),
        ("AskStream", "OK", 1),
        ("Search", "INVALID_ARGUMENT", 1),
    ]:
        labels = {"rpc_method": method, "rpc_grpc_status_code": status}
        assert grew(scrapes, "gateway", "rag_gateway_rpc_requests_total", **labels) == calls, labels
        assert grew(scrapes, "gateway", "rag_gateway_rpc_duration_seconds_count", **labels) == calls, labels
    assert grew(scrapes, "gateway", "rag_gateway_rpc_requests_total") == 9, "no other call was counted"
    assert grew(scrapes, "gateway", "rag_gateway_rpc_duration_seconds_sum") > 0


def test_gateway_times_every_stage_and_counts_ingest_and_answers(
    scrapes: Scrapes,
) -> None:
    for stage in ("check", "chunk", "embed", "upsert", "retrieve", "generate", "time_to_first_token"):
        assert grew(scrapes, "gateway", "rag_gateway_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert grew(scrapes, "gateway", "rag_gateway_ingest_documents_total", status="created") == 4
    assert grew(scrapes, "gateway", "rag_gateway_ingest_documents_total", status="unchanged") == 4
    assert grew(scrapes, "gateway", "rag_gateway_ingest_chunks_total", status="created") >= 4
    assert grew(scrapes, "gateway", "rag_gateway_answers_total") >= 3
    assert grew(scrapes, "gateway", "rag_gateway_answer_cache_lookups_total", result="miss") >= 1
    assert grew(scrapes, "gateway", "rag_gateway_answer_cache_lookups_total", result="hit") >= 1


def test_embedder_reports_batches_cache_and_queue(
    scrapes: Scrapes,
) -> None:
    embed = {"rpc_method": "Embed", "rpc_grpc_status_code": "OK"}
    assert grew(scrapes, "embedder", "rag_embedder_rpc_requests_total", **embed) >= 4  # Search + 3 asks
    assert grew(scrapes, "embedder", "rag_embedder_stage_duration_seconds_count", stage="embed") >= 4
    assert grew(scrapes, "embedder", "rag_embedder_stage_duration_seconds_count", stage="chunk") >= 4
    assert grew(scrapes, "embedder", "rag_embedder_batch_size_count") >= 1
    assert grew(scrapes, "embedder", "rag_embedder_batch_size_sum") >= 1
    assert grew(scrapes, "embedder", "rag_embedder_batch_padded_tokens_sum") > 0
    assert grew(scrapes, "embedder", "rag_embedder_cache_hits_total") >= 2  # the repeated question
    assert grew(scrapes, "embedder", "rag_embedder_cache_misses_total") >= 1
    _, after = scrapes
    assert after["embedder"].types["rag_embedder_queue_depth"] == "gauge"
    assert after["embedder"].has("rag_embedder_queue_depth")
    assert after["embedder"].total("rag_embedder_queue_depth") == 0, "every text queued was embedded"


def test_the_queue_autoscaler_uses_the_exported_name(
    scrapes: Scrapes,
) -> None:
    component = REPO / "k8s/components/embedder-queue-autoscaling/kustomization.yaml"
    patch = yaml.safe_load(yaml.safe_load(component.read_text())["patches"][0]["patch"])
    names = [m["pods"]["metric"]["name"] for m in patch["spec"]["metrics"] if m["type"] == "Pods"]
    _, after = scrapes
    assert names
    for name in names:
        assert name in after["embedder"].types, f"the HPA scales on {name}, not exported"


def test_retriever_counts_searches_and_hits(scrapes: Scrapes) -> None:
    search = {"rpc_method": "Search", "rpc_grpc_status_code": "OK"}
    assert grew(scrapes, "retriever", "rag_retriever_rpc_requests_total", **search) >= 4
    assert grew(scrapes, "retriever", "rag_retriever_rpc_requests_total", rpc_method="Upsert") >= 1
    hybrid = {"stage": "search", "search_mode": "hybrid"}
    assert grew(scrapes, "retriever", "rag_retriever_stage_duration_seconds_count", **hybrid) >= 4
    assert grew(scrapes, "retriever", "rag_retriever_search_hits_count", search_mode="hybrid") >= 4
    assert grew(scrapes, "retriever", "rag_retriever_search_hits_sum") >= 4  # each found something


def test_generator_counts_calls_and_no_tokens_for_the_extractive_backend(scrapes: Scrapes) -> None:
    # Two Asks past the answer cache and the first of the repeated ones; the second was cached.
    for method, calls in [("Generate", 3), ("GenerateStream", 1)]:
        labels = {"rpc_method": method, "rpc_grpc_status_code": "OK"}
        assert grew(scrapes, "generator", "rag_generator_rpc_requests_total", **labels) == calls, method
    assert grew(scrapes, "generator", "rag_generator_stage_duration_seconds_count", stage="generate") == 4
    _, after = scrapes
    # The extractive backend of the test stack uses no LLM: both series exist, at 0 tokens.
    for kind in ("input", "output"):
        labels = {"gen_ai_token_type": kind, "backend": "extractive"}
        assert after["generator"].has("rag_generator_tokens_total", **labels), kind
        assert after["generator"].total("rag_generator_tokens_total", **labels) == 0, kind
    assert after["generator"].total("rag_generator_tokens_total") == 0, "no other backend counted"


def test_generator_counts_the_tokens_its_llm_reports(openai_scrapes: Scrapes) -> None:
    counted = {
        kind: grew(
            openai_scrapes,
            "generator",
            "rag_generator_tokens_total",
            gen_ai_token_type=kind,
            backend=f"openai:{MODEL}",
        )
        for kind in ("input", "output")
    }
    assert counted == {
        "input": sum(usage["prompt_tokens"] for usage in LLM_USAGE),
        "output": sum(usage["completion_tokens"] for usage in LLM_USAGE),
    }


def test_health_checks_are_not_counted(scrapes: Scrapes) -> None:
    _, after = scrapes
    for service, page in after.items():
        services = {dict(labels).get("rpc_service") for (name, labels) in page.samples if "_rpc_" in name}
        assert "grpc.health.v1.Health" not in services, service
