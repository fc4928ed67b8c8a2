"""Connections to PostgreSQL as the store uses them: session settings, codecs, time limits and outages.

Every pooled connection speaks pgvector's `vector` and jsonb as Python
objects, and runs under a statement_timeout. Whichever module ran the
statement, the database's answers that are no bug of ours become domain errors:

- a statement cancelled (past the statement timeout) → DeadlineExceeded;
- no pooled connection free within the acquire timeout → Unavailable;
- a database out of reach, or one that ended the connection (a restart, a
  failover, a terminated backend) → Unavailable, which the gateway retries.

Any other database error is a bug and propagates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from services.common.errors import DeadlineExceeded, Unavailable
from services.retriever.schema import RETRIEVER_ROLE, SETUP_COMMAND

log = logging.getLogger(__name__)

# Errors meaning the database is out of reach, or ended the connection,
# rather than the request wrong.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.IdleSessionTimeoutError,
    asyncpg.IdleInTransactionSessionTimeoutError,
)

# What asyncpg says when a statement is started on a connection the server
# has ended with an error (FATAL, as every backend gets at a restart) while
# it sat idle in the pool: asyncpg has read the error and waits, in its
# protocol state 2, for a "ready" that never comes; the close itself is not
# read yet, so the connection does not look closed. Any other
# InternalClientError is a bug.
_ENDED_WHILE_IDLE = "another operation (2) is in progress"

_UNAVAILABLE = "the document store is unavailable; retry later"

_JSONB_VERSION = b"\x01"


def session_settings(extra: Mapping[str, str] | None) -> dict[str, str]:
    """UTC unless overridden, so time-range filters read offset-less metadata timestamps as UTC."""
    return {"timezone": "UTC", "application_name": "rag-retriever", **(extra or {})}


async def create_pool(
    dsn: str, settings: Mapping[str, str], *, min_size: int, max_size: int, statement_timeout_ms: int
) -> asyncpg.Pool:
    """A pool whose connections speak `vector` and `jsonb`; the vector type must already exist."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        server_settings={**settings, "statement_timeout": str(statement_timeout_ms)},
    )


@asynccontextmanager
async def acquire(pool: asyncpg.Pool, timeout_s: float) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, given back afterwards; the errors of the module docstring."""
    with _as_service_errors():
        try:
            conn = await pool.acquire(timeout=timeout_s)
        except TimeoutError:
            raise Unavailable(
                "the document store's connections are all busy (none came free within the pool "
                f"acquire timeout of {timeout_s:g} s); retry"
            ) from None
        try:
            yield conn
        finally:
            await pool.release(conn)


async def warn_if_superuser(conn: asyncpg.Connection) -> None:
    """A superuser connection works, but puts the whole server in the hands of whoever runs the retriever."""
    if await conn.fetchval("SELECT current_setting('is_superuser') = 'on'"):
        log.warning(
            "connected to PostgreSQL as %s, a superuser: a compromised retriever could read and change "
            "every database on the server and run programs on its host; run `%s` once as an "
            "administrator and connect as %s, which reaches only its own tables",
            await conn.fetchval("SELECT current_user"),
            SETUP_COMMAND,
            RETRIEVER_ROLE,
        )


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Per pooled connection: pgvector's codec, and jsonb as Python objects.

    jsonb uses the binary format (a version byte, then JSON text) because
    COPY, which writes the chunks, only speaks binary.
    """
    await register_vector(conn)
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )


def _encode_jsonb(value: Any) -> bytes:
    return _JSONB_VERSION + json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


@contextmanager
def _as_service_errors() -> Iterator[None]:
    try:
        yield
    except asyncpg.QueryCanceledError as exc:
        # DEADLINE_EXCEEDED, not UNAVAILABLE: the gateway's channels retry
        # UNAVAILABLE at once, and a statement that ran this long would most
        # likely run as long again, on a database that is probably why.
        raise DeadlineExceeded(
            "the document store cancelled a statement that ran longer than its statement timeout; retry later"
        ) from exc
    except Exception as exc:
        if not _lost_connection(exc):
            raise
        raise Unavailable(_UNAVAILABLE) from exc


def _lost_connection(exc: Exception) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        # A connection the server closed mid-transaction surfaces as an
        # InterfaceError when the transaction ends; any other is a bug.
        return "connection is closed" in str(exc)
    return isinstance(exc, asyncpg.InternalClientError) and _ENDED_WHILE_IDLE in str(exc)
