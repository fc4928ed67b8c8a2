"""Who is calling the gateway, and which namespaces their API key grants.

The access interceptor (gateway/access.py) authenticates every GatewayService
call with Authorizer.authenticate and checks the request's namespace with
Caller.require_grant; health and reflection are other services and stay open.

The key never goes into a message, a log line or a span: errors say only what
was wrong and how to send a key, and spans get the key's id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import trace

from gateway.keys import KeyEntry, KeyStore
from services.common.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

_MISSING = "missing API key: send metadata 'authorization: Bearer <key>' (or 'x-api-key: <key>')"
_INVALID = "the API key is not valid (malformed, unknown or revoked)"


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


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its key's entry, or None with authentication off (every namespace)."""

    key: KeyEntry | None

    def require_grant(self, namespace: str, field: str = "namespace") -> None:
        """Raises PermissionDenied unless the key grants `namespace`."""
        if self.key is not None and not self.key.allows(namespace):
            raise PermissionDenied(f"this API key does not grant namespace {namespace!r:.80}", field=field)


ANYONE = Caller(None)


class Authorizer:
    """Authentication on when given a KeyStore; with None, every caller is let through (local default)."""

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

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        """The caller the call's metadata names; raises Unauthenticated without a valid key."""
        if self._store is None:
            return ANYONE
        key = key_from_metadata(metadata)
        if key is None:
            raise Unauthenticated(_MISSING)
        entry = self._store.lookup(key) if key else None
        if entry is None:
            raise Unauthenticated(_INVALID)
        trace.get_current_span().set_attribute("rag.gateway.api_key_id", entry.id)
        return Caller(entry)
