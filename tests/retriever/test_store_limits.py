"""The store's time limits: the statement timeout, the pool acquire timeout, and their settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from services.common.errors import DeadlineExceeded, Unavailable
from services.retriever.config import RetrieverSettings
from services.retriever.limits import (
    DEFAULT_POOL_ACQUIRE_TIMEOUT_S,
    DEFAULT_STATEMENT_TIMEOUT_MS,
    MAX_STATEMENT_TIMEOUT_MS,
)
from services.retriever.store import ChunkStore
from tests.retriever.conftest import DIMENSION
from tests.retriever.test_store import document, wait_until_blocked

# Long enough for every statement of a store that nothing blocks, on a busy
# machine; a statement waiting on a lock the test holds outlasts any value.
SHORT_STATEMENT_TIMEOUT_MS = 1000
SHORT_ACQUIRE_TIMEOUT_S = 0.2

# A delete first locks the documents it takes (store/writes.py).
DELETE_WAITING = "%SELECT d.document_id FROM rag_documents d%FOR UPDATE%"


@asynccontextmanager
async def document_locked(dsn: str, namespace: str, document_id: str) -> AsyncIterator[None]:
    """The document's row locked by another connection, as a long write would hold it."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT 1 FROM rag_documents WHERE namespace = $1 AND document_id = $2 FOR UPDATE",
                namespace,
                document_id,
            )
            yield
    finally:
        await conn.close()


@asynccontextmanager
async def a_store_of_one_connection(dsn: str, namespace: str, **limits: Any) -> AsyncIterator[ChunkStore]:
    """A store whose pool has one connection, with the namespace holding the document "doc"."""
    store = await ChunkStore.connect(dsn, dimension=DIMENSION, max_pool_size=1, **limits)
    try:
        await store.upsert(namespace, [document("doc")])
        yield store
    finally:
        await store.close()


async def test_a_statement_past_the_statement_timeout_is_deadline_exceeded(
    store_dsn: str, namespace: str
) -> None:
    limits = {"statement_timeout_ms": SHORT_STATEMENT_TIMEOUT_MS}
    async with a_store_of_one_connection(store_dsn, namespace, **limits) as store:
        async with document_locked(store_dsn, namespace, "doc"):
            with pytest.raises(DeadlineExceeded, match="ran longer than its statement timeout"):
                await store.delete(namespace, ["doc"])
        # The same pooled connection, given back and reset, still works.
        assert await store.delete(namespace, ["doc"]) == (1, 1)


async def test_waiting_past_the_acquire_timeout_for_a_connection_is_unavailable(
    store_dsn: str, db: asyncpg.Connection, namespace: str
) -> None:
    limits = {"pool_acquire_timeout_s": SHORT_ACQUIRE_TIMEOUT_S}
    async with a_store_of_one_connection(store_dsn, namespace, **limits) as store:
        async with document_locked(store_dsn, namespace, "doc"):
            # The pool's one connection, held by a delete waiting for the lock.
            holding = asyncio.create_task(store.delete(namespace, ["doc"]))
            await wait_until_blocked(db, DELETE_WAITING)
            with pytest.raises(Unavailable, match=r"connections are all busy.*0\.2 s\); retry"):
                await store.search_keyword(namespace, "chunk", 3)
        assert await holding == (1, 1)
        assert await store.search_keyword(namespace, "chunk", 3) == []


def test_the_settings_default_to_the_limits() -> None:
    settings = RetrieverSettings(database_url="postgresql://x")
    assert settings.statement_timeout_ms == DEFAULT_STATEMENT_TIMEOUT_MS
    assert settings.pool_acquire_timeout_s == DEFAULT_POOL_ACQUIRE_TIMEOUT_S


@pytest.mark.parametrize(
    "refused",
    [
        {"statement_timeout_ms": 0},
        {"statement_timeout_ms": MAX_STATEMENT_TIMEOUT_MS + 1},
        {"pool_acquire_timeout_s": 0},
    ],
)
def test_the_settings_refuse_no_limit(refused: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(refused))):
        RetrieverSettings(database_url="postgresql://x", **refused)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"statement_timeout_ms": 0}, f"statement_timeout_ms must be 1..{MAX_STATEMENT_TIMEOUT_MS}, got 0"),
        ({"pool_acquire_timeout_s": 0.0}, "pool_acquire_timeout_s must be more than 0, got 0.0"),
    ],
)
async def test_the_store_refuses_no_limit(store_dsn: str, arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await ChunkStore.connect(store_dsn, dimension=DIMENSION, **arguments)
