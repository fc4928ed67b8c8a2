"""The server span every call gets (services/common/call_observer.py), on a real grpc.aio server."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common.call_observer import CallObserver
from services.common.errors import InvalidArgument, Unavailable
from services.common.errors_interceptor import ErrorInterceptor
from services.common.server import untraced_calls


async def _answer(request: bytes, context: Any) -> bytes:
    if request == b"bad":
        raise InvalidArgument("bad request", field="request")
    if request == b"down":
        raise Unavailable("down")
    return request


async def _answers(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield request
    yield request


OBSERVED = grpc.method_handlers_generic_handler(
    "test.Observed",
    {
        "Unary": grpc.unary_unary_rpc_method_handler(_answer),
        "Stream": grpc.unary_stream_rpc_method_handler(_answers),
    },
)


def _unary(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary("/test.Observed/Unary")


def _stream(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream("/test.Observed/Stream")


@pytest.fixture
async def observed() -> AsyncIterator[tuple[grpc.aio.Channel, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = grpc.aio.server(
        interceptors=[CallObserver("rag.test", untraced_calls(), provider), ErrorInterceptor()]
    )
    server.add_generic_rpc_handlers((OBSERVED,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, exporter
    await server.stop(None)


async def test_a_call_is_a_server_span_under_the_callers_span(
    observed: tuple[grpc.aio.Channel, InMemorySpanExporter],
) -> None:
    channel, exporter = observed
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)

    await _unary(channel)(b"hello", metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),))

    (span,) = exporter.get_finished_spans()
    assert span.name == "/test.Observed/Unary"
    assert span.kind is SpanKind.SERVER
    assert span.context is not None
    assert f"{span.context.trace_id:032x}" == trace_id
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == parent_id
    assert span.attributes is not None
    assert dict(span.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "test.Observed",
        "rpc.method": "Unary",
        "rpc.grpc.status_code": grpc.StatusCode.OK.value[0],
    }
    assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("request_bytes", "code", "status"),
    [
        (b"bad", grpc.StatusCode.INVALID_ARGUMENT, StatusCode.UNSET),  # the caller's mistake
        (b"down", grpc.StatusCode.UNAVAILABLE, StatusCode.ERROR),  # the server's failure
    ],
)
async def test_only_a_servers_failure_marks_its_span_an_error(
    observed: tuple[grpc.aio.Channel, InMemorySpanExporter],
    request_bytes: bytes,
    code: grpc.StatusCode,
    status: StatusCode,
) -> None:
    channel, exporter = observed

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _unary(channel)(request_bytes)

    assert raised.value.code() == code
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == code.value[0]
    assert span.status.status_code is status


async def test_a_stream_is_one_span_ending_after_its_last_message(
    observed: tuple[grpc.aio.Channel, InMemorySpanExporter],
) -> None:
    channel, exporter = observed

    replies = [reply async for reply in _stream(channel)(b"x")]

    assert replies == [b"x", b"x"]
    (span,) = exporter.get_finished_spans()
    assert span.name == "/test.Observed/Stream"
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
