"""Tracing and logging set-up from the standard OTEL_* environment variables.

Exporters follow OTEL_TRACES_EXPORTER (comma-separated: otlp, console, none).
Unlike the OpenTelemetry default, unset means "none", so a laptop without a
collector logs no export errors; spans still exist and give log lines their
trace id. OTLP uses OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL (grpc, the default
here, or http/protobuf) and the matching OTEL_EXPORTER_OTLP_* endpoint settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter


def setup_tracing(default_service_name: str) -> TracerProvider:
    """Builds the process's tracer provider and makes it the global one."""
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in _exporters_from_env():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def exporter_names(variable: str, environment: Mapping[str, str] | None = None) -> list[str]:
    """The exporters an OTEL_<SIGNAL>_EXPORTER variable names, comma-separated, in order.

    Unset, empty or "none" names none. `environment` defaults to this process's.
    """
    value = (os.environ if environment is None else environment).get(variable, "")
    names = (name.strip() for name in value.split(","))
    return [name for name in names if name and name != "none"]


def otlp_protocol(signal: str) -> str:
    """OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL, else grpc; checked."""
    protocol = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"
    )
    if protocol not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported {protocol!r}; use grpc or http/protobuf")
    return protocol


def _exporters_from_env() -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in exporter_names("OTEL_TRACES_EXPORTER"):
        if name == "otlp":
            exporters.append(_otlp_exporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r}; use otlp, console or none"
            )
    return exporters


def _otlp_exporter() -> SpanExporter:
    if otlp_protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


class _TraceContextFilter(logging.Filter):
    """Adds the current trace and span ids to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.trace_id = format(context.trace_id, "032x") if context.is_valid else "-"
        record.span_id = format(context.span_id, "016x") if context.is_valid else "-"
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_TraceContextFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s trace_id=%(trace_id)s %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else "-"
