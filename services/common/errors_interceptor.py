"""Turns exceptions raised by servicers into gRPC statuses, in one place.

ServiceError subclasses become their status with their message (and a
google.rpc.BadRequest field violation when they name a field). Anything else is
a bug: it is logged with the trace id and the caller gets INTERNAL with that
trace id, never the exception text.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from services.common.errors import ServiceError
from services.common.handlers import Handler, HandlerInterceptor, rewrapped
from services.common.telemetry import current_trace_id

log = logging.getLogger(__name__)


# Where gRPC carries a google.rpc.Status with rich error details.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def _status_metadata(error: ServiceError) -> tuple[tuple[str, str | bytes], ...]:
    details = []
    if error.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        details.append(packed)
    if error.retry_after_ms is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(error.retry_after_ms)
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    metadata: tuple[tuple[str, str | bytes], ...] = ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    if error.retry_after_ms is not None:
        # gRPC clients with a retry policy for this code wait this long before retrying.
        metadata += ((RETRY_PUSHBACK_KEY, str(error.retry_after_ms)),)
    return metadata


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: BaseException, method: str) -> None:
    if isinstance(error, ServiceError):
        log.info("%s failed: %s %s", method, error.code.name, error.message)
        await context.abort(error.code, error.message, trailing_metadata=_status_metadata(error))
    trace_id = current_trace_id()
    log.exception("%s failed unexpectedly", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error; trace id {trace_id}")


class _Undecodable:
    """Stands in for a request protobuf could not parse, so the handler can refuse it properly."""


_UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # An exception in a deserializer becomes UNKNOWN with the parser's text;
    # the handler below answers INVALID_ARGUMENT instead.
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return deserialize


async def _refuse_undecodable(context: grpc.aio.ServicerContext[Any, Any], method: str) -> None:
    message = (
        f"the request to {method} is not a valid message: strings must be valid UTF-8 "
        "and messages may nest at most 100 levels"
    )
    log.info("%s failed: INVALID_ARGUMENT undecodable request", method)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is _UNDECODABLE:
            await _refuse_undecodable(context, method)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, method)

    return call


def _wrap_streaming(
    behavior: Callable[..., AsyncIterator[Any]], method: str
) -> Callable[..., AsyncIterator[Any]]:
    """For handlers that answer with a stream; `request` is one message or, for bidi calls, a stream."""

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if request is _UNDECODABLE:
            await _refuse_undecodable(context, method)
        if isinstance(request, AsyncIterator):
            request = _checking_each(request, context, method)
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, method)

    return call


async def _checking_each(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any], method: str
) -> AsyncIterator[Any]:
    """A bidi call's requests, each checked as the handler reads it."""
    async for request in requests:
        if request is _UNDECODABLE:
            await _refuse_undecodable(context, method)
        yield request


class ErrorInterceptor(HandlerInterceptor):
    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        method = details.method
        return rewrapped(
            handler,
            wrap_unary=lambda behavior: _wrap_unary(behavior, method),
            wrap_streaming=lambda behavior: _wrap_streaming(behavior, method),
            request_deserializer=_tolerant(handler.request_deserializer),
        )
