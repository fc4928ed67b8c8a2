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
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import ServiceError
from services.common.telemetry import current_trace_id

log = logging.getLogger(__name__)


def _status_metadata(error: ServiceError) -> tuple[tuple[str, bytes], ...]:
    details = []
    if error.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        details.append(packed)
    status = status_pb2.Status(code=error.code.value[0], message=error.message, details=details)
    return tuple(rpc_status.to_status(status).trailing_metadata)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: BaseException, method: str) -> None:
    if isinstance(error, ServiceError):
        log.info("%s failed: %s %s", method, error.code.name, error.message)
        await context.abort(error.code, error.message, trailing_metadata=_status_metadata(error))
    trace_id = current_trace_id()
    log.exception("%s failed unexpectedly", method, exc_info=error)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error; trace id {trace_id}",
        trailing_metadata=tuple(
            rpc_status.to_status(status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")).trailing_metadata
        ),
    )


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, method)

    return call


def _wrap_server_stream(behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error, method)

    return call


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_server_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
