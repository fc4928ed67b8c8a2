"""Rebuilding an RPC method handler around a wrapped behavior: what server interceptors do.

gRPC keeps one behavior slot per kind of RPC (unary-unary, stream-unary,
unary-stream, stream-stream). The interceptors here wrap a behavior one of two
ways, by how it answers: with one message (a coroutine) or with a stream (an
async generator; for bidi calls its request is itself a stream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behavior = Callable[..., Any]
Wrap = Callable[[Behavior], Behavior]
Deserializer = Callable[[bytes], Any]


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
            wrap_streaming(handler.unary_stream), deserialize, serialize
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            wrap_streaming(handler.stream_stream), deserialize, serialize
        )
    return handler
