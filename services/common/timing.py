"""Per-stage timings: each stage is a span in the trace and an entry in the response."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace

from rag.common.v1 import common_pb2


class StageTimer:
    """Times the named stages of one request, in the order they ran."""

    def __init__(self, tracer: trace.Tracer, span_prefix: str) -> None:
        self._tracer = tracer
        self._span_prefix = span_prefix
        self.durations_ms: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[trace.Span]:
        started = time.perf_counter()
        try:
            with self._tracer.start_as_current_span(f"{self._span_prefix}.{name}") as span:
                yield span
        finally:
            self.durations_ms.append((name, (time.perf_counter() - started) * 1000))

    def record(self, name: str, duration_ms: float) -> None:
        """Adds a stage timed elsewhere, e.g. time to first token."""
        self.durations_ms.append((name, duration_ms))

    def to_proto(self) -> list[common_pb2.StageTiming]:
        return [common_pb2.StageTiming(stage=name, duration_ms=ms) for name, ms in self.durations_ms]
