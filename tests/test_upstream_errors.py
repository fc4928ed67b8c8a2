"""How the gateway reports a dependency's failure to its own caller."""

from __future__ import annotations

import grpc
import pytest

from gateway.upstream import calling
from services.common import errors


def failure(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "reported"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT),
        (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        # The gateway's own credentials or the dependency's bug: not the caller's doing.
        (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL),
        (grpc.StatusCode.INTERNAL, grpc.StatusCode.INTERNAL),
        (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL),
    ],
)
def test_a_dependencys_status_is_passed_through_only_where_it_means_the_same(
    code: grpc.StatusCode, reported: grpc.StatusCode
) -> None:
    with pytest.raises(errors.ServiceError) as raised, calling("retriever"):
        raise failure(code, "namespace 'b' is outside this call's tenant")
    assert raised.value.code == reported
    assert "retriever" in str(raised.value)
