"""The whole system for the end-to-end tests: real processes, real PostgreSQL, real model."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack, free_port
from services.common.registry import DEFAULT_PORTS
from tests.otlp_receiver import OtlpReceiver

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "samples"


@pytest.fixture(scope="session", autouse=True)
def cli_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where `rag` commands run by tests record index versions: never the user's own state folder."""
    with pytest.MonkeyPatch.context() as patch:
        state_dir = tmp_path_factory.mktemp("rag-state")
        patch.setenv("RAG_STATE_DIR", str(state_dir))
        yield state_dir


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, otlp_receiver: OtlpReceiver) -> Iterator[Stack]:
    telemetry = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_receiver.port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    ports = {name: free_port() for name in DEFAULT_PORTS}
    # Each service serves Prometheus /metrics on a port of its own (tests/e2e/test_service_metrics.py).
    metrics_ports = {name: free_port() for name in DEFAULT_PORTS}
    with Stack(
        data_dir=tmp_path_factory.mktemp("stack"), ports=ports, env=telemetry, metrics_ports=metrics_ports
    ) as running:
        yield running


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Iterator[gateway_pb2_grpc.GatewayServiceStub]:
    with grpc.insecure_channel(stack.gateway_target) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


_namespaces = itertools.count()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of the test's own, so tests never see each other's documents."""
    readable = re.sub(r"[^a-z0-9_-]+", "-", request.node.name.lower())
    return f"t{next(_namespaces)}-{readable}"[:63]


def sample_document(name: str) -> gateway_pb2.Document:
    path = SAMPLES / name
    return gateway_pb2.Document(id=name, title=path.stem.replace("-", " "), text=path.read_text())


THREE_TOPICS = ["postgres-backup-runbook.md", "expense-policy.md", "oncall-handbook.md"]


@pytest.fixture
def three_documents(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str) -> str:
    """The test's namespace holding three sample documents on different topics."""
    gateway.IngestDocuments(
        gateway_pb2.IngestDocumentsRequest(
            namespace=namespace, documents=[sample_document(name) for name in THREE_TOPICS]
        )
    )
    return namespace
