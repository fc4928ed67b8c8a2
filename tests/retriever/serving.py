"""A RetrieverServicer behind a real grpc.aio server on port 0, as the service runs it.

Calls go over a real channel, so handlers get a real call context (metadata
included), and pass the same interceptors as in production: the inner-hop token
and tenant check (with a key of this module's), then errors become statuses.
The client of serving() signs its calls as the gateway does, vouching for the
namespace each request names.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.errors_interceptor import STATUS_DETAILS_KEY, ErrorInterceptor
from services.common.internal_auth import (
    MIN_KEY_BYTES,
    InternalAuthInterceptor,
    TokenSigner,
    TokenVerifier,
    signing_interceptors,
)
from services.common.registry import RETRIEVER
from services.retriever.servicer import RetrieverServicer
from tests.internal_calls import VouchForRequestNamespace

KEY = secrets.token_bytes(MIN_KEY_BYTES)
# Signs as the gateway does, with the key of the servers started here.
SIGNER = TokenSigner(KEY)
_SERVICE = retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"]


@asynccontextmanager
async def retriever_target(servicer: RetrieverServicer) -> AsyncIterator[str]:
    """The target of a server for `servicer`, with the retriever's interceptors, until the block ends."""
    internal_auth = InternalAuthInterceptor(TokenVerifier(KEY, RETRIEVER.name), tenant_service=_SERVICE)
    server = grpc.aio.server(interceptors=[ErrorInterceptor(), internal_auth])
    retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@asynccontextmanager
async def serving(servicer: RetrieverServicer) -> AsyncIterator[retriever_pb2_grpc.RetrieverServiceAsyncStub]:
    """A stub whose calls reach `servicer` signed, each for the namespace its request names."""
    signing = [VouchForRequestNamespace(), *signing_interceptors(SIGNER, RETRIEVER.name)]
    async with (
        retriever_target(servicer) as target,
        grpc.aio.insecure_channel(target, interceptors=signing) as channel,
    ):
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)


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
