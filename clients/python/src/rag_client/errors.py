"""One exception for every failed call: RagError, with a subclass per status code worth catching.

The gateway puts more than a status and a message on a failure: a
google.rpc.BadRequest naming the request field at fault, and a
google.rpc.RetryInfo saying when to try again (admission, a keys file being
replaced). grpcio-status decodes them from the call's trailers; callers get
them as plain attributes and never handle grpc.RpcError themselves.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """A request field the server refused, e.g. field="retrieval.top_k", and why."""

    field: str
    description: str


class RagError(Exception):
    """A call that failed: its status code, the server's message, and any rich details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: tuple[FieldViolation, ...] = (),
        retry_delay: datetime.timedelta | None = None,
    ) -> None:
        super().__init__(f"[{code.name}] {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations
        # When the server said the call may be tried again; None when it did not say.
        self.retry_delay = retry_delay

    @staticmethod
    def from_rpc_error(error: grpc.RpcError) -> RagError:
        """The RagError (of the status code's subclass) for a failed call, sync or grpc.aio."""
        code = error.code()
        violations: list[FieldViolation] = []
        retry_delay = None
        for detail in _status(error).details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry_info = error_details_pb2.RetryInfo()
                detail.Unpack(retry_info)
                retry_delay = retry_info.retry_delay.ToTimedelta()
        kind = _BY_CODE.get(code, RagError)
        return kind(code, error.details() or "", field_violations=tuple(violations), retry_delay=retry_delay)


def _status(error: grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status in the trailers; an empty one when there is none or it contradicts the call."""
    # from_call reads code(), details() and trailing_metadata(), which the sync API's errors (grpc.Call)
    # and grpc.aio's AioRpcError both have.
    try:
        status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:
        # Its code or message differs from the call's own (a proxy rewrote one): the details are not ours.
        return status_pb2.Status()
    return status or status_pb2.Status()


class InvalidArgument(RagError):
    """The request is wrong: see field_violations for the field and what is accepted."""


class NotFound(RagError):
    pass


class Unauthenticated(RagError):
    """No API key, or one the gateway does not know (malformed, unknown or revoked)."""


class PermissionDenied(RagError):
    """The API key does not grant the namespace."""


class ResourceExhausted(RagError):
    """Too many calls in flight, or a request over a limit; retry_delay says when to try again."""


class Unavailable(RagError):
    """The gateway or one of its dependencies is down; already retried by the channel."""


class DeadlineExceeded(RagError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[RagError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}
