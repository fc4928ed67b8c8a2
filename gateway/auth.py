"""Who is calling the gateway, and which namespaces their API key grants.

The access interceptor (gateway/access.py) authenticates every GatewayService
call with Authorizer.authenticate and checks the request's namespace with
Caller.require_grant; health and reflection are other services and stay open.

Without a keys file every caller is let in, which only a gateway that listens
on loopback may do unless GATEWAY_ALLOW_UNAUTHENTICATED says otherwise
(require_keys_unless_local, checked by the settings at start-up).

The key never goes into a message, a log line or a span: errors say only what
was wrong and how to send a key, and spans get the key's id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import trace

from gateway.keys import KeyEntry, KeyStore
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.loopback import is_loopback_host
from services.common.server import ReportHealth

log = logging.getLogger(__name__)

_MISSING = "missing API key: send metadata 'authorization: Bearer <key>' (or 'x-api-key: <key>')"
_INVALID = "the API key is not valid (malformed, unknown or revoked)"
# How often the keys file is checked besides on every call, so that the health
# follows it while no call comes (a replica out of service gets none).
KEYS_CHECK_INTERVAL_S = 1.0


def require_keys_unless_local(
    host: str, keys_file: Path | None, allow_unauthenticated: bool, variable: Callable[[str], str]
) -> None:
    """Raises ValueError for a gateway that would let anyone on the network in; `variable` names settings."""
    if keys_file is not None or allow_unauthenticated or is_loopback_host(host):
        return
    raise ValueError(
        f"{variable('api_keys_file')} is not set, so the gateway would let any caller that reaches "
        f"{host} read and write every namespace. Set {variable('api_keys_file')} (keys are made with "
        f"`rag keys create`), listen on a loopback address ({variable('host')}=127.0.0.1), or set "
        f"{variable('allow_unauthenticated')}=true to run without authentication anyway"
    )


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

    @property
    def key_id(self) -> str | None:
        return None if self.key is None else self.key.id

    def require_grant(self, namespace: str, field: str = "namespace") -> None:
        """Raises PermissionDenied unless the key grants `namespace`."""
        if self.key is not None and not self.key.allows(namespace):
            raise PermissionDenied(f"this API key does not grant namespace {namespace!r:.80}", field=field)

    def record_on_span(self) -> None:
        """Names the key (its id, never the key) on the call's span."""
        if self.key is not None:
            trace.get_current_span().set_attribute("rag.gateway.api_key_id", self.key.id)


ANYONE = Caller(None)


class Authorizer:
    """Authentication on when given a KeyStore; with None, every caller is let through."""

    def __init__(self, store: KeyStore | None) -> None:
        self._store = store

    @staticmethod
    def from_file(path: Path | None, host: str) -> Authorizer:
        if path is None:
            log.warning(
                "authentication is OFF: GATEWAY_API_KEYS_FILE is not set, any caller that reaches %s "
                "reaches any namespace",
                host,
            )
            return Authorizer(None)
        store = KeyStore(path)
        log.info("authentication on: %d API keys from %s", len(store), path)
        return Authorizer(store)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        """The caller the call's metadata names; raises Unauthenticated without a valid key,
        and KeysFileUnreadable (UNAVAILABLE) while the keys file cannot be read."""
        if self._store is None:
            return ANYONE
        key = key_from_metadata(metadata)
        if key is None:
            raise Unauthenticated(_MISSING)
        entry = self._store.lookup(key) if key else None
        if entry is None:
            raise Unauthenticated(_INVALID)
        return Caller(entry)

    async def watch_keys_file(self, report_health: ReportHealth) -> None:
        """Reports NOT_SERVING while the keys file cannot be read and SERVING once it can again.

        Calls check the file too and are refused at once while it is broken; this
        check needs no call, so a replica taken out of service (and so sent no
        calls) comes back when the file is fixed.
        """
        if self._store is None:
            return
        serving = True
        while True:
            await asyncio.sleep(KEYS_CHECK_INTERVAL_S)
            valid = self._store.refresh()
            if valid != serving:
                await report_health(valid)
                serving = valid
