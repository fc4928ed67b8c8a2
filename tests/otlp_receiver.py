"""A minimal OTLP/gRPC trace receiver: the services export spans to it like to a collector."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

# What a span attribute is read as: its scalar value, None for arrays, maps and bytes.
AttributeValue = str | bool | int | float | None
SCALAR_KINDS = ("string_value", "bool_value", "int_value", "double_value")

# opentelemetry-proto ships its gRPC module without annotations; this is the generated signature.
_add_trace_servicer: Callable[[trace_service_pb2_grpc.TraceServiceServicer, grpc.Server], None] = (
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server
)


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    # The resource's service.instance.id, e.g. from OTEL_RESOURCE_ATTRIBUTES: tells replicas apart.
    instance_id: str = ""
    # The span's own attributes, as Python values.
    attributes: dict[str, AttributeValue] = field(default_factory=dict)


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        _add_trace_servicer(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received += [
                    ReceivedSpan(
                        service=attributes.get("service.name", "?"),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        instance_id=attributes.get("service.instance.id", ""),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                    )
                    for span in scope_spans.spans
                ]
        with self._lock:
            self._spans += received
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], object], timeout_s: float = 15.0
    ) -> list[ReceivedSpan]:
        """Spans once predicate(spans) holds; the services export in batches."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if predicate(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.1)


def _value(value: common_pb2.AnyValue) -> AttributeValue:
    kind = value.WhichOneof("value")
    scalar: AttributeValue = getattr(value, kind) if kind in SCALAR_KINDS else None
    return scalar
