"""Channels to the services under test, and what a failed call says, for the tables and the log."""

from __future__ import annotations

import grpc

from services.common.internal_auth import TokenSigner, signing_interceptors


def channel(target: str, signer: TokenSigner | None = None, audience: str = "") -> grpc.aio.Channel:
    """A channel of its own TCP connection, signing every call for `audience` when given a signer.

    A local subchannel pool: channels to one target in one process would otherwise
    share a single TCP connection, and "a channel per client" would mean nothing.
    The inner services serve only calls signed as the gateway signs them.
    """
    interceptors = signing_interceptors(signer, audience) if signer is not None else None
    return grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1)], interceptors=interceptors
    )


def status_name(error: BaseException) -> str:
    """The gRPC status code's name, or the exception's type for a failure outside gRPC (a timeout)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


def detail(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.details() or ""
    return str(error)
