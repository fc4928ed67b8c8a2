"""Inner-hop authentication: the gateway signs every call it makes to the embedder,
retriever and generator, and they serve only calls it signed.

The token is a JWT (HS256) made with the secret every service reads from its
`<SERVICE>_INTERNAL_AUTH_KEY_FILE`, sent as the call's `x-rag-internal-token`
metadata, with the claims
- iss "rag-gateway", and aud the called service's name (services/common/registry.py):
  a token made for the embedder opens nothing at the retriever;
- iat, and exp no later than the call's deadline, capped at MAX_TOKEN_LIFETIME_S;
- namespaces, on retriever calls: the namespaces the gateway's access check let
  the call touch. The retriever takes the tenant from this claim only.

Why a signed token rather than a certificate per service (mTLS with identities):
- it works with or without TLS, so the local stack (`rag up`, the tests) runs the
  same check as a cluster;
- it carries the tenant: a certificate says which service calls, not for which
  tenant, so the retriever would still have to trust an unsigned header for that;
- health checks and reflection need no credential: plaintext probes (the manifests'
  `grpc:` probes) keep working on the same port;
- checking it costs tens of microseconds of HMAC per call, done before the request
  is decoded.
mTLS is still recommended between pods, for confidentiality: someone who can read
plaintext traffic could replay a token they saw, to the same service and for the
same namespaces, until it expires (at most MAX_TOKEN_LIFETIME_S).

The key is shared: whatever can verify a token can also sign one. Only the four
services mount it, and a leak of it from any of them is a leak of all inner hops:
rotate it by replacing the file (or Secret) and restarting all four.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor

from services.common.errors import PermissionDenied, Unauthenticated
from services.common.handlers import Handler, HandlerInterceptor, checked_first, refusing_unread
from services.common.tenant import TENANT_FIELD, namespaces_to_sign
from services.common.validation import require_namespace

log = logging.getLogger(__name__)

TOKEN_METADATA_KEY = "x-rag-internal-token"
ISSUER = "rag-gateway"
ALGORITHM = "HS256"
# HS256's own strength: a shorter secret is easier to guess than the hash is to break.
MIN_KEY_BYTES = 32
# A token only has to reach the service (and survive the channel's retries of
# UNAVAILABLE, a few seconds); the shorter it lives, the shorter a replay window.
MAX_TOKEN_LIFETIME_S = 60.0
# How far the gateway's clock may be from a service's, either way.
CLOCK_SKEW_S = 5.0
NAMESPACES_CLAIM = "namespaces"

# All a refused caller learns: why in detail goes to the service's log.
MISSING_TOKEN = "missing internal token"
INVALID_TOKEN = "invalid internal token"
EXPIRED_TOKEN = "expired internal token"

# Method prefixes open to any caller: probes and tooling need no credential.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

MetadataPairs = Iterable[tuple[str, str | bytes]]


def key_file_variable(env_prefix: str) -> str:
    """The setting that names a service's key file, e.g. RETRIEVER_INTERNAL_AUTH_KEY_FILE."""
    return f"{env_prefix}INTERNAL_AUTH_KEY_FILE"


class InternalAuthConfigError(ValueError):
    """An inner-hop key setting that cannot be used; the message names the setting."""


def read_key(path: Path | None, setting: str) -> bytes:
    """The secret in the key file: its bytes without surrounding whitespace (so a base64 line works).

    Read once at start-up: a missing, unreadable or short key stops the process
    with the name of the setting to fix.
    """
    if path is None:
        raise InternalAuthConfigError(
            f"{setting} is not set: every service needs the inner-hop key file, a random secret "
            f"of at least {MIN_KEY_BYTES} bytes shared by the four services (e.g. `openssl rand -base64 32`)"
        )
    try:
        key = path.read_bytes().strip()
    except OSError as error:
        raise InternalAuthConfigError(f"{setting}={path}: cannot read: {error.strerror}") from error
    if len(key) < MIN_KEY_BYTES:
        raise InternalAuthConfigError(
            f"{setting}={path}: the key has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed"
        )
    return key


class TokenSigner:
    """Makes the token for one call: the gateway's side."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def token(self, audience: str, *, lifetime_s: float | None = None, namespaces: Sequence[str] = ()) -> str:
        """A token for `audience` that lives lifetime_s (the call's time left), at most the cap."""
        lifetime = (
            MAX_TOKEN_LIFETIME_S if lifetime_s is None else min(max(lifetime_s, 0.0), MAX_TOKEN_LIFETIME_S)
        )
        now = time.time()
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": audience,
            "iat": int(now),
            "exp": math.ceil(now + lifetime),
        }
        if namespaces:
            claims[NAMESPACES_CLAIM] = list(namespaces)
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def metadata(
        self, audience: str, *, lifetime_s: float | None = None, namespaces: Sequence[str] = ()
    ) -> tuple[tuple[str, str], ...]:
        """The metadata entry that carries a fresh token."""
        return ((TOKEN_METADATA_KEY, self.token(audience, lifetime_s=lifetime_s, namespaces=namespaces)),)


@dataclass(frozen=True)
class InternalClaims:
    """What a verified token vouches for beyond "the gateway sent this call"."""

    # The namespaces the call may touch; empty on calls for no tenant (embedder, generator).
    namespaces: frozenset[str]


class TokenVerifier:
    """Checks a call's token for one service: the services' side."""

    def __init__(self, key: bytes, audience: str) -> None:
        self._key = key
        self._audience = audience

    def verify(self, metadata: MetadataPairs | None) -> InternalClaims:
        """The claims of the call's one valid token; raises Unauthenticated (the reason as its cause)."""
        tokens = [value for name, value in metadata or () if name == TOKEN_METADATA_KEY]
        if not tokens:
            raise Unauthenticated(MISSING_TOKEN)
        if len(tokens) > 1:
            raise Unauthenticated(INVALID_TOKEN) from ValueError(f"{len(tokens)} tokens in one call")
        (token,) = tokens
        try:
            claims = jwt.decode(
                token.decode(errors="replace") if isinstance(token, bytes) else token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=ISSUER,
                leeway=CLOCK_SKEW_S,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise Unauthenticated(EXPIRED_TOKEN) from error
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(INVALID_TOKEN) from error
        namespaces = claims.get(NAMESPACES_CLAIM, [])
        if not isinstance(namespaces, list) or not all(isinstance(name, str) for name in namespaces):
            raise Unauthenticated(INVALID_TOKEN) from ValueError(
                f"{NAMESPACES_CLAIM} is not a list of strings"
            )
        return InternalClaims(frozenset(namespaces))


class InternalAuthInterceptor(HandlerInterceptor):
    """Serves only calls with a valid token for this service; health and reflection stay open.

    The token is checked from the call's metadata when its handler is looked up,
    before the request is read: a refused call's request is never received, and
    the caller gets UNAUTHENTICATED saying only whether the token was missing,
    invalid or expired.

    With `tenant_service` (the retriever's), each of its RPCs names the namespace
    it touches in its request's TENANT_FIELD, and that namespace must be one of
    the token's (PERMISSION_DENIED otherwise), checked once the request is decoded
    and before the handler runs. The claims go from the verification to that check
    in the call's own handler, never through shared state, and the servicers need
    no part in it: every RPC of the service is covered, which the constructor
    checks, as the gateway's access interceptor does for its RPCs.
    """

    def __init__(self, verifier: TokenVerifier, tenant_service: ServiceDescriptor | None = None) -> None:
        self._verifier = verifier
        self._tenant_prefix: str | None = None
        if tenant_service is not None:
            _require_tenant_fields(tenant_service)
            self._tenant_prefix = f"/{tenant_service.full_name}/"

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        if details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        try:
            claims = self._verifier.verify(details.invocation_metadata)
        except Unauthenticated as refused:
            return _refusing(handler, refused, details.method)
        if self._tenant_prefix is None or not details.method.startswith(self._tenant_prefix):
            return handler
        return checked_first(handler, functools.partial(_require_tenant, claims))


def _require_tenant_fields(service: ServiceDescriptor) -> None:
    """Refuses to start if an RPC could go without the tenant check: one request, with TENANT_FIELD."""
    for method in service.methods:
        field = method.input_type.fields_by_name.get(TENANT_FIELD)
        if method.client_streaming or field is None or field.type != FieldDescriptor.TYPE_STRING:
            raise ValueError(
                f"{method.full_name} cannot be checked for its tenant: it needs one request "
                f"with a string field {TENANT_FIELD!r}"
            )


def _require_tenant(
    claims: InternalClaims, request: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    namespace = require_namespace(getattr(request, TENANT_FIELD), TENANT_FIELD)
    if namespace not in claims.namespaces:
        raise PermissionDenied(f"the call is not authorized for namespace {namespace!r}", field=TENANT_FIELD)


def _refusing(handler: Handler, error: Unauthenticated, method: str) -> Handler:
    """`handler` answering `error` at once, its request never read (handlers.refusing_unread).

    Why it was refused goes to the log, inside the call (so with its trace id), not to the caller.
    """

    def log_why() -> None:
        log.warning("refused %s: %s (%s)", method, error.message, error.__cause__ or "no token sent")

    return refusing_unread(handler, error, log_why)


def signed_metadata(
    signer: TokenSigner, audience: str, timeout: float | None, metadata: MetadataPairs | None
) -> tuple[tuple[str, str | bytes], ...]:
    """A call's metadata with its token for `audience`, living as long as the call's timeout (capped).

    A call made for a tenant names it with Tenant.metadata(); its entries move
    into the token's namespaces claim, so the tenant never travels unsigned.
    """
    kept, namespaces = namespaces_to_sign(metadata)
    return (*kept, *signer.metadata(audience, lifetime_s=timeout, namespaces=namespaces))


class _Signing:
    """Signs every call of a channel for the service at its other end (the gateway's channels).

    The token lives as long as the call's timeout (capped); a call made for a
    tenant names it with Tenant.metadata(), which this moves into the token's
    namespaces claim, so it never travels unsigned.
    """

    def __init__(self, signer: TokenSigner, audience: str) -> None:
        self._signer = signer
        self._audience = audience

    async def _intercept(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._signed(client_call_details), request)

    async def _intercept_streamed(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)

    def _signed(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = signed_metadata(self._signer, self._audience, details.timeout, details.metadata)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )


class _SigningUnaryUnary(_Signing, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _Signing._intercept


class _SigningUnaryStream(_Signing, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _Signing._intercept


class _SigningStreamUnary(_Signing, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _Signing._intercept_streamed


class _SigningStreamStream(_Signing, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _Signing._intercept_streamed


def signing_interceptors(signer: TokenSigner, audience: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for an asyncio channel to `audience` that sign every call (see _Signing).

    One per kind of call: a grpc.aio channel files each interceptor under the
    first kind it implements only, and would leave the other kinds unsigned.
    """
    kinds = (_SigningUnaryUnary, _SigningUnaryStream, _SigningStreamUnary, _SigningStreamStream)
    return [kind(signer, audience) for kind in kinds]
