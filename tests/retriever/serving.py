"""A RetrieverServicer behind a real grpc.aio server on port 0, as the service runs it.

Calls go over a real channel, so handlers get a real call context (metadata
included) and errors pass through the same ErrorInterceptor as in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from rag.retriever.v1 import retriever_pb2_grpc
from services.common.errors_interceptor import STATUS_DETAILS_KEY, ErrorInterceptor
from services.retriever.servicer import RetrieverServicer


@asynccontextmanager
async def serving(servicer: RetrieverServicer) -> AsyncIterator[retriever_pb2_grpc.RetrieverServiceAsyncStub]:
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield retriever_pb2_grpc.RetrieverServiceStub(channel)
    finally:
        await server.stop(None)


async def refusal(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """The error `call` ends in, which must carry `code`."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value


def violated_field(error: grpc.aio.AioRpcError) -> str:
    """The request field a google.rpc.BadRequest in the error's status details names."""
    details = dict(error.trailing_metadata() or ())[STATUS_DETAILS_KEY]
    assert isinstance(details, bytes)
    for packed in status_pb2.Status.FromString(details).details:
        bad_request = error_details_pb2.BadRequest()
        if packed.Unpack(bad_request):
            (violation,) = bad_request.field_violations
            field: str = violation.field
            return field
    raise AssertionError(f"no BadRequest in the status of {error.details()!r}")
