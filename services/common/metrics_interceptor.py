"""Request count and latency of every RPC, by method and final status, in one place.

<namespace>.rpc.requests (counter) and <namespace>.rpc.duration (histogram, s),
with rpc.service, rpc.method and rpc.grpc.status_code (the status name, e.g.
"OK", "INVALID_ARGUMENT"). It sits outside ErrorInterceptor, so a servicer's
exception arrives here as the abort it was turned into, with its status on the
context. A stream is timed until its last message is sent, or until it fails
or the caller goes away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import metrics

from services.common.handlers import Handler, HandlerInterceptor, rewrapped
from services.common.metrics import LATENCY_BUCKETS_S

Context = grpc.aio.ServicerContext[Any, Any]
Attributes = dict[str, str]


def final_status(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status the caller gets, from how the handler ended."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code  # set by an abort (ErrorInterceptor) or by the handler itself
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        # gRPC cancels the handler when the caller cancels or its deadline passes.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what grpc.aio answers for an unhandled exception


class MetricsInterceptor(HandlerInterceptor):
    def __init__(self, namespace: str, measured: Callable[[grpc.HandlerCallDetails], bool]) -> None:
        """namespace: rag.<service>; measured: which calls count (not health checks or reflection)."""
        meter = metrics.get_meter(__name__)
        self._requests = meter.create_counter(
            f"{namespace}.rpc.requests", unit="{request}", description="RPCs handled, by final status."
        )
        self._duration = meter.create_histogram(
            f"{namespace}.rpc.duration",
            unit="s",
            description="Time from a call's arrival to its last response or failure.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        self._measured = measured

    def _record(self, attributes: Attributes, code: grpc.StatusCode, started: float) -> None:
        attributes = {**attributes, "rpc.grpc.status_code": code.name}
        self._requests.add(1, attributes)
        self._duration.record(time.perf_counter() - started, attributes)

    def _wrap_unary(
        self, behavior: Callable[..., Awaitable[Any]], attributes: Attributes
    ) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                self._record(attributes, final_status(context, error), started)

        return call

    def _wrap_streaming(
        self, behavior: Callable[..., AsyncIterator[Any]], attributes: Attributes
    ) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                self._record(attributes, final_status(context, error), started)

        return call

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        # An unknown method never gets here (HandlerInterceptor): its name is
        # whatever the caller sent, unbounded as a label.
        if not self._measured(details):
            return handler
        service, _, method = details.method.lstrip("/").rpartition("/")
        attributes = {"rpc.service": service, "rpc.method": method}
        return rewrapped(
            handler,
            wrap_unary=lambda behavior: self._wrap_unary(behavior, attributes),
            wrap_streaming=lambda behavior: self._wrap_streaming(behavior, attributes),
        )
