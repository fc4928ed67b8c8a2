"""Channels that add metadata to every call they make, without grpc.aio's client interceptors.

A grpc.aio client interceptor wraps each call in an interceptor call object
with a task of its own, whatever the interceptor does: about 0.25 ms of CPU
per call and interceptor on these machines (bench/README.md, "search.py").
The gateway's only per-call client work is adding metadata (its signed token
and the trace context), so its channels do just that, as the generated stubs
call them: every multi-callable the stub asks for adds the metadata when
called, and the call is gRPC's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentelemetry import propagate

Metadata = Sequence[tuple[str, str | bytes]]
# (method, the call's timeout, the metadata it was given) -> the metadata to send.
AddMetadata = Callable[[str, float | None, Metadata | None], Metadata]


class MetadataChannel:
    """What a generated stub needs of a channel, each call's metadata passed through `add`."""

    def __init__(self, channel: grpc.aio.Channel, add: AddMetadata) -> None:
        self._channel = channel
        self._add = add

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _Adding:
        return _Adding(self._channel.unary_unary(method, *args, **kwargs), method, self._add)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _Adding:
        return _Adding(self._channel.unary_stream(method, *args, **kwargs), method, self._add)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _Adding:
        return _Adding(self._channel.stream_unary(method, *args, **kwargs), method, self._add)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _Adding:
        return _Adding(self._channel.stream_stream(method, *args, **kwargs), method, self._add)


class _Adding:
    def __init__(self, multicallable: Any, method: str, add: AddMetadata) -> None:
        self._multicallable = multicallable
        self._method = method
        self._add = add

    def __call__(
        self, request: Any, *, timeout: float | None = None, metadata: Metadata | None = None, **kwargs: Any
    ) -> Any:
        return self._multicallable(
            request, timeout=timeout, metadata=self._add(self._method, timeout, metadata), **kwargs
        )


def with_trace_context(metadata: Metadata) -> Metadata:
    """`metadata` and the current trace context (W3C traceparent), so the callee's spans join the trace."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*metadata, *carrier.items())
