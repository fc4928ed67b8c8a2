"""Per-stage timings: each stage is a span in the trace, an entry in the response, and a metric.

The metric is the histogram <prefix>.stage.duration (seconds) with a `stage`
attribute, e.g. rag.gateway.stage.duration{stage="time_to_first_token"}: one
instrument per service covers every stage it times.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import metrics, trace

from rag.common.v1 import common_pb2
from services.common.metrics import LATENCY_BUCKETS_S

_meter = metrics.get_meter(__name__)


@functools.cache
def _stage_duration(prefix: str) -> metrics.Histogram:
    # Cached: a StageTimer is made per request, an instrument once per service.
    return _meter.create_histogram(
        f"{prefix}.stage.duration",
        unit="s",
        description="Time spent in one stage of a request, by stage.",
        explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
    )


class StageTimer:
    """Times the named stages of one request, in the order they ran."""

    def __init__(self, tracer: trace.Tracer, span_prefix: str) -> None:
        self._tracer = tracer
        self._span_prefix = span_prefix
        self._histogram = _stage_duration(span_prefix)
        self.durations_ms: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str, attributes: Mapping[str, str] | None = None) -> Iterator[trace.Span]:
        """attributes: extra dimensions of the stage's latency metric, e.g. the search mode."""
        started = time.perf_counter()
        try:
            with self._tracer.start_as_current_span(f"{self._span_prefix}.{name}") as span:
                yield span
        finally:
            self._add(name, (time.perf_counter() - started) * 1000, attributes)

    def record(self, name: str, duration_ms: float) -> None:
        """Adds a stage timed elsewhere, e.g. time to first token."""
        self._add(name, duration_ms, None)

    def _add(self, name: str, duration_ms: float, attributes: Mapping[str, str] | None) -> None:
        self.durations_ms.append((name, duration_ms))
        self._histogram.record(duration_ms / 1000, {**(attributes or {}), "stage": name})

    def to_proto(self) -> list[common_pb2.StageTiming]:
        return [common_pb2.StageTiming(stage=name, duration_ms=ms) for name, ms in self.durations_ms]
