"""Who may call the gateway, for which namespaces; and the tenant it passes on to the retriever.

Each RPC calls Authorizer.authorize(context, namespace) first. It is not a server
interceptor because serve() takes none from a service; checking in the servicer
also leaves health and reflection (other servicers) open to probes by design.

The key never goes into a message, a log line or a span: errors say only what
was wrong and how to send a key, and spans get the key's id.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import trace

from gateway.keys import KeyEntry, KeyStore
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.tenant import TENANT_HEADER

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Metadata = tuple[tuple[str, str], ...]


_MISSING = "missing API key: send metadata 'authorization: Bearer <key>' (or 'x-api-key: <key>')"
_INVALID = "the API key is not valid (malformed, unknown or revoked)"

# Set per RPC; each grpc.aio call runs in a task of its own, so it never leaks
# between calls, and tasks the pipeline starts inherit it.
_tenant: contextvars.ContextVar[Metadata] = contextvars.ContextVar("rag_tenant", default=())


def tenant_metadata() -> Metadata:
    """Metadata for a retriever call made on behalf of the current RPC; empty with authentication off."""
    return _tenant.get()


def key_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The key from 'authorization: Bearer <key>' or 'x-api-key'; "" when present but malformed."""
    for name, value in metadata or ():
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if name == "authorization":
            scheme, _, key = text.strip().partition(" ")
            return key.strip() if scheme.lower() == "bearer" else ""
        if name == "x-api-key":
            return text.strip()
    return None


class Authorizer:
    """Authentication on when given a KeyStore; with None, every call is let through (local default)."""

    def __init__(self, store: KeyStore | None) -> None:
        self._store = store

    @staticmethod
    def from_file(path: Path | None) -> Authorizer:
        if path is None:
            log.warning(
                "authentication is OFF: GATEWAY_API_KEYS_FILE is not set, any caller reaches any namespace"
            )
            return Authorizer(None)
        store = KeyStore(path)
        log.info("authentication on: %d API keys from %s", len(store), path)
        return Authorizer(store)

    def authorize(self, context: Context, namespace: str) -> None:
        """Raises UNAUTHENTICATED / PERMISSION_DENIED; else sets the tenant for the retriever calls."""
        if self._store is None:
            return
        entry = self._authenticate(context)
        if not entry.allows(namespace):
            raise PermissionDenied(
                f"this API key does not grant namespace {namespace!r:.80}", field="namespace"
            )
        # Only the namespace checked here: the retriever then refuses every other.
        _tenant.set(((TENANT_HEADER, namespace),))

    def _authenticate(self, context: Context) -> KeyEntry:
        assert self._store is not None
        key = key_from_metadata(context.invocation_metadata())
        if key is None:
            raise Unauthenticated(_MISSING)
        entry = self._store.lookup(key) if key else None
        if entry is None:
            raise Unauthenticated(_INVALID)
        trace.get_current_span().set_attribute("rag.gateway.api_key_id", entry.id)
        return entry
