"""Service metrics pieces that need no running service (the rest: tests/e2e/test_service_metrics.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from rag_cli.stack import Stack
from services.common.call_observer import final_status
from services.common.metrics import namespace_of
from services.common.telemetry import exporter_names, otlp_protocol


def test_namespace_is_the_proto_package_without_its_version() -> None:
    assert namespace_of("rag.embedder.v1.EmbedderService") == "rag.embedder"
    assert namespace_of("rag.gateway.v12.GatewayService") == "rag.gateway"
    assert namespace_of("rag.vector.Service") == "rag.vector"


class _Context:
    def __init__(self, code: grpc.StatusCode | None = None, remaining: float | None = None) -> None:
        self._code, self._remaining = code, remaining

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def time_remaining(self) -> float | None:
        return self._remaining


@pytest.mark.parametrize(
    ("context", "error", "expected"),
    [
        (_Context(), None, grpc.StatusCode.OK),
        (_Context(grpc.StatusCode.INVALID_ARGUMENT), grpc.aio.AbortError(), grpc.StatusCode.INVALID_ARGUMENT),
        (_Context(remaining=5.0), asyncio.CancelledError(), grpc.StatusCode.CANCELLED),
        (_Context(), GeneratorExit(), grpc.StatusCode.CANCELLED),
        (_Context(remaining=-0.1), asyncio.CancelledError(), grpc.StatusCode.DEADLINE_EXCEEDED),
        (_Context(), RuntimeError("bug"), grpc.StatusCode.UNKNOWN),
    ],
)
def test_final_status(context: Any, error: BaseException | None, expected: grpc.StatusCode) -> None:
    assert final_status(context, error) is expected


def test_stack_turns_prometheus_on_only_for_processes_given_a_port(tmp_path: Path) -> None:
    stack = Stack(data_dir=tmp_path, metrics_ports={"embedder": 19464})
    assert stack._metrics_environment("gateway", {}) == {}
    assert stack._metrics_environment("embedder", {"OTEL_METRICS_EXPORTER": "otlp"}) == {
        "OTEL_METRICS_EXPORTER": "otlp,prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": "19464",
    }
    assert (
        stack._metrics_environment("embedder", {"OTEL_METRICS_EXPORTER": "none"})["OTEL_METRICS_EXPORTER"]
        == "prometheus"
    )


def test_exporter_names_are_comma_separated_and_unset_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    unset = exporter_names("OTEL_METRICS_EXPORTER")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", " prometheus, otlp ,")

    assert unset == []
    assert exporter_names("OTEL_METRICS_EXPORTER") == ["prometheus", "otlp"]
    assert exporter_names("OTEL_METRICS_EXPORTER", {"OTEL_METRICS_EXPORTER": "none"}) == []
    assert exporter_names("OTEL_METRICS_EXPORTER", {"OTEL_METRICS_EXPORTER": "none, console"}) == ["console"]
    assert exporter_names("OTEL_METRICS_EXPORTER", {}) == [], "a given environment replaces the process's"


def test_the_stack_and_the_services_read_the_exporters_alike(tmp_path: Path) -> None:
    stack = Stack(data_dir=tmp_path, metrics_ports={"gateway": 19464})
    for value, expected in [
        (" otlp , console", "otlp,console,prometheus"),
        ("prometheus,none", "prometheus"),
    ]:
        added = stack._metrics_environment("gateway", {"OTEL_METRICS_EXPORTER": value})
        assert added["OTEL_METRICS_EXPORTER"] == expected
        assert exporter_names("OTEL_METRICS_EXPORTER", added) == expected.split(",")


def test_otlp_protocol_per_signal_wins_over_the_general_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", raising=False)
    default = otlp_protocol("TRACES")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc")

    assert default == "grpc"
    assert otlp_protocol("TRACES") == "http/protobuf"
    assert otlp_protocol("METRICS") == "grpc"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="use grpc or http/protobuf"):
        otlp_protocol("TRACES")
