"""Calls to the embedder, retriever and generator as the gateway makes them, for tests that call them.

Such a test plays the gateway: each call carries a fresh token for the service it
goes to (services/common/internal_auth.py) and vouches for the namespace its
request names, if any, as the gateway does for the tenant it checked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from rag_cli.stack import Stack
from services.common.internal_auth import TokenSigner
from services.common.registry import Service
from services.common.tenant import TENANT_FIELD, Tenant


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _SignedCalls(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Signs every call of a (blocking) channel for one service."""

    def __init__(self, signer: TokenSigner, audience: str) -> None:
        self._signer = signer
        self._audience = audience

    def _signed(self, details: grpc.ClientCallDetails, request: Any) -> _CallDetails:
        """The call with a token vouching for the namespace its request names (raw or streamed: none)."""
        namespace = getattr(request, TENANT_FIELD, None)
        token = self._signer.metadata(
            self._audience,
            lifetime_s=details.timeout,
            namespaces=[namespace] if isinstance(namespace, str) else [],
        )
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *token],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._signed(client_call_details, request), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._signed(client_call_details, request), request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._signed(client_call_details, None), request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(self._signed(client_call_details, None), request_iterator)


def signing(channel: grpc.Channel, signer: TokenSigner, service: Service) -> grpc.Channel:
    """`channel` with every call signed for `service`; closing it closes `channel`."""
    return grpc.intercept_channel(channel, _SignedCalls(signer, service.name))


def signed_channel(
    stack: Stack, service: Service, target: str | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A plaintext channel to `service` of `stack` (or at `target`) whose calls carry the stack's tokens."""
    channel = grpc.insecure_channel(target or stack.target(service.name), options=options)
    return signing(channel, stack.signer(), service)


class VouchForRequestNamespace(grpc.aio.UnaryUnaryClientInterceptor):
    """Names each call's request namespace as its tenant, as the gateway's Tenant.metadata() does.

    Put before the signing_interceptors() of an asyncio channel: they sign it into the token.
    """

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details = client_call_details
        tenant = Tenant(getattr(request, TENANT_FIELD)).metadata()
        vouched = grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*(details.metadata or ()), *tenant),
            details.credentials,
            details.wait_for_ready,
        )
        return await continuation(vouched, request)
