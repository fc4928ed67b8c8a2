"""The server span, request count and latency of every RPC, by method and final status, in one place.

- A SERVER span named after the method ("/rag.gateway.v1.GatewayService/Ask"),
  the child of the caller's span when the call carries a W3C traceparent, with
  rpc.system, rpc.service, rpc.method and rpc.grpc.status_code; its status is
  ERROR for the codes that mean the server failed (OpenTelemetry's RPC
  conventions), not for a caller's mistake. It is the current span while the
  handler runs, so every span and log line of the call joins its trace.
- <namespace>.rpc.requests (counter) and <namespace>.rpc.duration (histogram, s),
  with rpc.service, rpc.method and rpc.grpc.status_code (the status name, e.g.
  "OK", "INVALID_ARGUMENT").

One wrapper does both, where opentelemetry-instrumentation-grpc's server
interceptor and a metrics interceptor used to wrap every call twice (about
0.1 ms of CPU per call less; bench/README.md, "search.py"). It sits
outside ErrorInterceptor, so a servicer's exception arrives here as the abort
it was turned into, with its status on the context. A stream is timed until
its last message is sent, or until it fails or the caller goes away.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as context_api
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

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


# The codes a server span marks as an error: the server failed, not the caller.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class CallObserver(HandlerInterceptor):
    def __init__(
        self,
        namespace: str,
        observed: Callable[[grpc.HandlerCallDetails], bool],
        tracer_provider: trace.TracerProvider,
    ) -> None:
        """namespace: rag.<service>; observed: which calls count (not health checks or reflection)."""
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
        self._tracer = tracer_provider.get_tracer(__name__)
        self._observed = observed

    def _start(self, details: grpc.HandlerCallDetails, attributes: Attributes) -> _Observed:
        metadata = details.invocation_metadata or ()
        carrier = {str(key): value for key, value in metadata if isinstance(value, str)}
        span = self._tracer.start_span(
            details.method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", **attributes},
        )
        return _Observed(self, span, attributes)

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        # An unknown method never gets here (HandlerInterceptor): its name is
        # whatever the caller sent, unbounded as a label.
        if not self._observed(details):
            return handler
        service, _, method = details.method.lstrip("/").rpartition("/")
        attributes = {"rpc.service": service, "rpc.method": method}

        def start() -> _Observed:
            return self._start(details, attributes)

        return rewrapped(
            handler,
            wrap_unary=lambda behavior: _wrap_unary(behavior, start),
            wrap_streaming=lambda behavior: _wrap_streaming(behavior, start),
        )


class _Observed:
    """One call in progress: its span, current while the handler runs, and its start time."""

    def __init__(self, observer: CallObserver, span: trace.Span, attributes: Attributes) -> None:
        self._observer = observer
        self._span = span
        self._attributes = attributes
        self._started = time.perf_counter()
        self._token = context_api.attach(trace.set_span_in_context(span))

    def end(self, context: Context, error: BaseException | None) -> None:
        code = final_status(context, error)
        context_api.detach(self._token)
        self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS:
            self._span.set_status(Status(StatusCode.ERROR, code.name))
            if error is not None and code is grpc.StatusCode.UNKNOWN:
                self._span.record_exception(error)
        self._span.end()
        attributes = {**self._attributes, "rpc.grpc.status_code": code.name}
        self._observer._requests.add(1, attributes)
        self._observer._duration.record(time.perf_counter() - self._started, attributes)


def _wrap_unary(
    behavior: Callable[..., Awaitable[Any]], start: Callable[[], _Observed]
) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: Context) -> Any:
        observed = start()
        error: BaseException | None = None
        try:
            return await behavior(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            observed.end(context, error)

    return call


def _wrap_streaming(
    behavior: Callable[..., AsyncIterator[Any]], start: Callable[[], _Observed]
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: Context) -> AsyncIterator[Any]:
        observed = start()
        error: BaseException | None = None
        try:
            async for response in behavior(request, context):
                yield response
        except BaseException as raised:
            error = raised
            raise
        finally:
            observed.end(context, error)

    return call
