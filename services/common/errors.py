"""Domain errors, each carrying the gRPC status code it maps to (its `code`).

Domain code raises these; the error interceptor (services.common.errors_interceptor)
turns them into statuses. Their messages reach the caller, so they say what was wrong
and what is accepted, and never carry SQL, stack traces or secrets.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of the errors whose message is safe to show the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str | None = None, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request field at fault, reported as a google.rpc.BadRequest violation.
        self.field = field
        # When the caller may try again, reported as google.rpc.RetryInfo.
        self.retry_after_ms = retry_after_ms


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
