"""`rag ingest --concurrency N`: calls side by side give what one at a time gives, and spread over
every embedder replica behind the gateway.

An ingest call embeds through one EmbedStream on one replica, so the replicas a
bulk load reaches are seen in each replica's count of EmbedStream calls on its
own Prometheus /metrics.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.main import main
from rag_cli.stack import Stack, free_port
from services.common.registry import GATEWAY_UPSTREAMS, upstream_target_variable
from tests.conftest import SAMPLES
from tests.e2e.replicas import Replicas
from tests.test_formats import make_pdf

REQUESTS_METRIC = "rag_embedder_rpc_requests_total"
REPLICAS = ("embedder-bulk1", "embedder-bulk2")
TOPICS = [
    ("volcanoes", "Magma rises through the crust and erupts as lava, ash and volcanic gas."),
    ("sourdough", "A sourdough starter of flour and water ferments wild yeast for days."),
    ("chess", "The Sicilian Defence answers 1.e4 with c5 and leads to sharp games."),
    ("tides", "The pull of the Moon and the Sun raises the tides twice a day."),
    ("bees", "Worker bees collect nectar from flowers and turn it into honey in the hive."),
    ("guitar", "Standard tuning sets the six guitar strings to E, A, D, G, B and E."),
    ("glaciers", "Glaciers carve U-shaped valleys as they creep downhill under their own weight."),
    ("coffee", "Espresso forces hot water through finely ground coffee at nine bars of pressure."),
    ("comets", "A comet's tail of gas and dust always points away from the Sun."),
    ("lichens", "A lichen is a fungus living together with an alga or a cyanobacterium."),
]


def _folder(folder: Path) -> Path:
    """Ten text and Markdown files, a PDF and a PDF that cannot be read, in two levels."""
    (folder / "more").mkdir(parents=True)
    for index, (topic, text) in enumerate(TOPICS):
        where = folder if index % 2 else folder / "more"
        suffix = ".md" if index % 3 else ".txt"
        (where / f"{topic}{suffix}").write_text(f"# {topic.title()}\n\n{text}\n")
    manual = make_pdf(["The lighthouse lamp is cleaned every Sunday morning."], title="Lamp manual")
    (folder / "manual.pdf").write_bytes(manual)
    (folder / "more" / "broken.pdf").write_bytes(manual[:300])
    return folder


def _rag(target: str, namespace: str, *args: str) -> int:
    return main(["--gateway", target, "--namespace", namespace, *args])


def _ingested(
    stack: Stack, namespace: str, folder: Path, concurrency: int, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, list[str]]:
    """The exit code, the summary printed with the namespace's name taken out, and the failures reported."""
    batches = ["--batch-size", "2", "--concurrency", str(concurrency)]
    code = _rag(stack.gateway_target, namespace, "ingest", str(folder), *batches)
    printed = capsys.readouterr()
    failures = [line for line in printed.err.splitlines() if line.startswith("  failed: ")]
    summary, version = printed.out.splitlines()
    assert version.startswith("index version ")
    return code, summary.replace(repr(namespace), "NS"), failures


def _stored(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str) -> list[tuple[str, ...]]:
    """Every document's id, chunk count and content hash, or its failure's reason."""
    listed = gateway.ListDocuments(gateway_pb2.ListDocumentsRequest(namespace=namespace, page_size=100))
    return sorted(
        (d.document_id, str(d.chunk_count), d.content_hash, d.failure.reason) for d in listed.documents
    )


def test_concurrent_calls_ingest_what_one_call_at_a_time_does(
    stack: Stack,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _folder(tmp_path / "docs")
    one, three = f"{namespace[:59]}-c1", f"{namespace[:59]}-c3"

    one_at_a_time = _ingested(stack, one, folder, 1, capsys)
    side_by_side = _ingested(stack, three, folder, 3, capsys)
    again = _ingested(stack, three, folder, 3, capsys)

    code, printed, failures = one_at_a_time
    assert code == 1, "a document failed"
    assert printed == "ingested 12 documents into NS: 11 created, 1 failed"
    assert len(failures) == 1
    assert failures[0].startswith("  failed: more/broken.pdf: ")
    assert side_by_side == one_at_a_time
    assert _stored(gateway, three) == _stored(gateway, one)
    assert len(_stored(gateway, three)) == 12
    assert again == (1, "ingested 12 documents into NS: 1 failed, 11 unchanged", failures)


def _embed_streams(metrics_url: str) -> int:
    """EmbedStream calls the replica has answered, from its /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        families = text_string_to_metric_families(reply.read().decode())
        return round(
            sum(
                sample.value
                for family in families
                for sample in family.samples
                if sample.name == REQUESTS_METRIC and sample.labels.get("rpc_method") == "EmbedStream"
            )
        )


@pytest.fixture
def replicas(stack: Stack, tmp_path: Path) -> Iterator[Replicas]:
    started = Replicas(stack, tmp_path / "replicas")
    yield started
    started.stop()


def test_concurrent_ingests_reach_every_embedder_replica(
    replicas: Replicas, stack: Stack, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = {}
    for name in REPLICAS:
        port = free_port()
        replicas.start(
            [name],
            OTEL_METRICS_EXPORTER="prometheus",
            OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
            OTEL_EXPORTER_PROMETHEUS_PORT=str(port),
        )
        metrics[name] = f"http://127.0.0.1:{port}/metrics"
    targets = {upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS}
    replicas.start(["gateway-bulk"], **{**targets, "GATEWAY_EMBEDDER_TARGET": replicas.targets(*REPLICAS)})
    target = replicas.target("gateway-bulk")
    # round_robin picks only among replicas it is connected to, and the second connection may
    # come up after the first calls: one document at a time, until each replica has embedded one.
    deadline = time.monotonic() + 60
    for attempt in range(100):
        if all(_embed_streams(url) for url in metrics.values()) or time.monotonic() > deadline:
            break
        warm_up = f"{namespace[:55]}-warm{attempt}"
        assert _rag(target, warm_up, "ingest", str(SAMPLES / "expense-policy.md")) == 0
    before = {name: _embed_streams(url) for name, url in metrics.items()}
    assert all(before.values()), f"both replicas took a warm-up stream: {before}"
    capsys.readouterr()

    folder = _folder(tmp_path / "docs")
    code = _rag(target, namespace, "ingest", str(folder), "--batch-size", "2", "--concurrency", "3")

    streams = {name: _embed_streams(url) - before[name] for name, url in metrics.items()}
    assert code == 1, capsys.readouterr().err  # the broken PDF
    assert "ingested 12 documents" in capsys.readouterr().out
    # Six calls of two documents, each with a readable one: six streams, over both replicas.
    assert sum(streams.values()) == 6, streams
    assert all(streams.values()), f"every replica took EmbedStream calls: {streams}"
    # Streams have a channel of their own at the gateway, so round_robin alternates them.
    assert max(streams.values()) - min(streams.values()) <= 1, streams
