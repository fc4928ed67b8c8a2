"""Rebuilding an RPC method handler around a wrapped behavior: what server interceptors do.

gRPC keeps one behavior slot per kind of RPC (unary-unary, stream-unary,
unary-stream, stream-stream). The interceptors here wrap a behavior one of two
ways, by how it answers: with one message (a coroutine) or with a stream (an
async generator; for bidi calls its request is itself a stream).
checked_first is the common case of a check that runs before the handler.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

Behavior = Callable[..., Any]
Wrap = Callable[[Behavior], Behavior]
Deserializer = Callable[[bytes], Any]
# Generic only in the type stubs: quoted, so nothing subscripts the class at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


class HandlerInterceptor(grpc.aio.ServerInterceptor, ABC):
    """A server interceptor that rebuilds the handler of each call; subclasses say how, in `wrap`."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        # An unknown method (no handler) is answered UNIMPLEMENTED by gRPC itself.
        if handler is None:
            return None
        return self.wrap(handler, handler_call_details)

    @abstractmethod
    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        """`handler` as this interceptor serves it (itself, for calls it leaves alone)."""


def rewrapped(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap_unary: Wrap,
    wrap_streaming: Wrap,
    request_deserializer: Deserializer | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with its behavior wrapped, and its request deserializer replaced when one is given."""
    deserialize = request_deserializer or handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), deserialize, serialize)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), deserialize, serialize)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(handler.unary_stream, wrap_unary, wrap_streaming), deserialize, serialize
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, wrap_unary, wrap_streaming), deserialize, serialize
        )
    return handler


def _wrap_stream(behavior: Behavior, wrap_unary: Wrap, wrap_streaming: Wrap) -> Behavior:
    """A streaming behavior wrapped as what it is.

    A stream is answered either by an async generator or by a coroutine that
    sends with context.write() (the health service's Watch). grpc.aio tells the
    two apart by the kind of function it is given, so the wrapper must be of
    the same kind as what it wraps.
    """
    if inspect.iscoroutinefunction(behavior):
        return wrap_unary(behavior)
    return wrap_streaming(behavior)


Check = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], None]


def checked_first(handler: grpc.RpcMethodHandler[Any, Any], check: Check) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with `check(request, context)` run before its behavior; what the check raises ends the call.

    `request` is the request message, or the request iterator of a call that streams its requests.
    """

    def wrap_unary(behavior: Behavior) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            check(request, context)
            return await behavior(request, context)

        return call

    def wrap_streaming(behavior: Behavior) -> Behavior:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            check(request, context)
            async for response in behavior(request, context):
                yield response

        return call

    return rewrapped(handler, wrap_unary, wrap_streaming)


def refusing_unread(
    handler: Handler, error: Exception, on_refusal: Callable[[], None] = lambda: None
) -> Handler:
    """A handler for `handler`'s RPC that answers `error` at once without reading the request.

    It declares a stream of requests whatever the RPC takes: gRPC starts such a
    handler before any message arrives, where for one request it would first
    receive the whole message into memory. The status ends the call, and the
    request, never read, goes with it. `on_refusal` runs inside the call (so
    with its trace id) just before, e.g. to log why.
    """

    async def refuse(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        on_refusal()
        raise error

    async def refuse_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        on_refusal()
        raise error
        yield  # an async generator: grpc.aio serves a stream of responses from one

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            refuse_stream, response_serializer=handler.response_serializer
        )
    return grpc.stream_unary_rpc_method_handler(refuse, response_serializer=handler.response_serializer)
