"""What a failed call says, for the tables and the log."""

from __future__ import annotations

import grpc


def status_name(error: BaseException) -> str:
    """The gRPC status code's name, or the exception's type for a failure outside gRPC (a timeout)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


def detail(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.details() or ""
    return str(error)
