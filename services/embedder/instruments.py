"""The embedder's own metrics (its RPC and stage metrics come from services.common)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Protocol

from opentelemetry import metrics

_meter = metrics.get_meter(__name__)

batch_size = _meter.create_histogram(
    "rag.embedder.batch.size",
    unit="{text}",
    description="Texts per model batch.",
    explicit_bucket_boundaries_advisory=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
batch_padded_tokens = _meter.create_histogram(
    "rag.embedder.batch.padded_tokens",
    unit="{token}",
    description="Tokens the model computes per batch: texts x tokens of the longest (padding included).",
    explicit_bucket_boundaries_advisory=(64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
cache_hits = _meter.create_counter(
    "rag.embedder.cache.hits", unit="{text}", description="Texts whose embedding came from the cache."
)
cache_misses = _meter.create_counter(
    "rag.embedder.cache.misses", unit="{text}", description="Texts looked up in the cache and not found."
)


class _Queue(Protocol):
    @property
    def queued_texts(self) -> int: ...


# The batchers alive in this process (one in a server; tests make more).
_queues: weakref.WeakSet[_Queue] = weakref.WeakSet()


def track_queue(queue: _Queue) -> None:
    """Counts queue.queued_texts in rag.embedder.queue.depth for as long as `queue` exists."""
    _queues.add(queue)


def _observe_queue_depth(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    # Runs on the Prometheus server's thread (or the push thread); len() of a deque is safe there.
    yield metrics.Observation(sum(queue.queued_texts for queue in list(_queues)))


# A gauge read at each collection (scrape or push), not a running count kept in step with the queue.
_meter.create_observable_gauge(
    "rag.embedder.queue.depth",
    callbacks=[_observe_queue_depth],
    unit="{text}",
    description="Texts waiting for a model batch; the embedder's autoscaling signal.",
)
