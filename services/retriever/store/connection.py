"""Connections to PostgreSQL as the store uses them: session settings, codecs, and outages.

Every pooled connection speaks pgvector's `vector` and jsonb as Python
objects. A database out of reach surfaces as Unavailable, whichever module
ran the statement; any other database error is a bug and propagates.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from services.common.errors import Unavailable

# Errors meaning the database is out of reach rather than the request wrong.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)

_JSONB_VERSION = b"\x01"


def session_settings(extra: Mapping[str, str] | None) -> dict[str, str]:
    """UTC unless overridden, so time-range filters read offset-less metadata timestamps as UTC."""
    return {"timezone": "UTC", "application_name": "rag-retriever", **(extra or {})}


async def create_pool(dsn: str, settings: Mapping[str, str], *, min_size: int, max_size: int) -> asyncpg.Pool:
    """A pool whose connections speak `vector` and `jsonb`; the vector type must already exist."""
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, server_settings=dict(settings)
    )


@asynccontextmanager
async def acquire(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection; Unavailable when the database cannot be reached."""
    with _unavailable_on_connection_errors():
        async with pool.acquire() as conn:
            yield conn


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
def _unavailable_on_connection_errors() -> Iterator[None]:
    try:
        yield
    except _CONNECTION_ERRORS as exc:
        raise Unavailable("the document store is unavailable; retry later") from exc
    except asyncpg.InterfaceError as exc:
        # A connection the server closed mid-transaction (a restart) surfaces as
        # an InterfaceError when the transaction ends; any other is a bug.
        if "connection is closed" not in str(exc):
            raise
        raise Unavailable("the document store is unavailable; retry later") from exc
