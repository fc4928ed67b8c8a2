"""Metrics set-up from the standard OTEL_* environment variables, and shared bucket layouts.

Exporters follow OTEL_METRICS_EXPORTER (comma-separated: prometheus, otlp,
console, none). Unlike the OpenTelemetry default (otlp), unset means "none", as
for traces: four local processes would otherwise fight over the Prometheus port,
or log export errors without a collector. Instruments still exist and record
(into nothing), so the code never asks whether metrics are on.

- prometheus: /metrics served on OTEL_EXPORTER_PROMETHEUS_HOST (default
  localhost; 0.0.0.0 in a pod) and OTEL_EXPORTER_PROMETHEUS_PORT (default 9464).
- otlp: pushed every OTEL_METRIC_EXPORT_INTERVAL ms (default 60000) over
  OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL (grpc, the default here, or
  http/protobuf) to the OTEL_EXPORTER_OTLP_* endpoint, as traces are.
- console: the same periodic push, printed to stdout (for debugging).

Every service's instruments are named rag.<service>.<what> (README "Metrics").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from services.common.telemetry import exporter_names, otlp_protocol

log = logging.getLogger(__name__)

DEFAULT_PROMETHEUS_PORT = 9464

# Seconds. The SDK's default buckets (0..10000) suit milliseconds; these span a
# cached embedding (~1 ms) to a large ingest or a slow LLM answer (minutes).
LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


@dataclass
class MetricsExport:
    """The process's meter provider and, with Prometheus on, its HTTP server."""

    provider: MeterProvider
    http_server: WSGIServer | None = None

    def shutdown(self) -> None:
        # Pushes what the periodic readers have not sent yet, then stops them.
        self.provider.shutdown()
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()


def setup_metrics(resource: Resource) -> MetricsExport:
    """Builds the process's meter provider from the environment and makes it the global one.

    Instruments created earlier through metrics.get_meter() (module-level ones)
    start recording into it from now on.
    """
    readers: list[MetricReader] = []
    http_server = None
    for name in exporter_names("OTEL_METRICS_EXPORTER"):
        if name == "prometheus":
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            readers.append(PrometheusMetricReader())
            http_server = _start_prometheus_server()
        elif name == "otlp":
            readers.append(PeriodicExportingMetricReader(_otlp_exporter()))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        else:
            raise ValueError(
                f"OTEL_METRICS_EXPORTER: unsupported exporter {name!r}; use prometheus, otlp, console or none"
            )
    provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(provider)
    return MetricsExport(provider, http_server)


def _start_prometheus_server() -> WSGIServer:
    from prometheus_client import start_http_server

    host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST") or "localhost"
    port = int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT") or DEFAULT_PROMETHEUS_PORT)
    # A daemon thread: scrapes never wait for the event loop, and it dies with the process.
    server, _ = start_http_server(port, addr=host)
    log.info("serving Prometheus metrics on http://%s:%d/metrics", host, port)
    return server


def _otlp_exporter() -> MetricExporter:
    if otlp_protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter()


def namespace_of(service_name: str) -> str:
    """rag.<service> from a gRPC service's full name: "rag.embedder.v1.EmbedderService" -> "rag.embedder"."""
    package = service_name.split(".")[:-1]
    if package and package[-1].startswith("v") and package[-1][1:].isdigit():
        package = package[:-1]
    return ".".join(package)
