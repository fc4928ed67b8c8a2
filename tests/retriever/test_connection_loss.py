"""Connections PostgreSQL ends (a restart, a failover, a terminated backend) are Unavailable, not INTERNAL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from services.common.errors import Unavailable
from services.retriever.store import ChunkStore
from tests.retriever.conftest import DIMENSION
from tests.retriever.half_open_relay import HalfOpenRelay
from tests.retriever.test_database_setup import connected
from tests.retriever.test_store import document, random_vector, wait_until_blocked
from tests.retriever.test_store_limits import DELETE_WAITING, document_locked

MakeDatabase = Callable[[], Awaitable[str]]

# What a restart does to every backend: FATAL "terminating connection due to
# administrator command", then the close. The call waits until they are gone.
TERMINATE_SQL = """
SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'rag-retriever' AND {condition}
"""


async def test_a_connection_ended_in_the_middle_of_a_statement_is_unavailable(
    store: ChunkStore, store_dsn: str, db: asyncpg.Connection, namespace: str
) -> None:
    await store.upsert(namespace, [document("doc")])
    async with document_locked(store_dsn, namespace, "doc"):
        deleting = asyncio.create_task(store.delete(namespace, ["doc"]))
        await wait_until_blocked(db, DELETE_WAITING)
        assert await db.fetchval(TERMINATE_SQL.format(condition="query LIKE $1"), DELETE_WAITING) == 1
        with pytest.raises(Unavailable, match="the document store is unavailable; retry later"):
            await deleting
    # The pool opens a new connection in its place.
    assert await store.delete(namespace, ["doc"]) == (1, 1)


async def test_a_connection_ended_while_idle_in_the_pool_is_unavailable(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    dsn = await make_database()
    async with HalfOpenRelay(tmp_path, dsn) as relay:
        store = await ChunkStore.connect(
            relay.dsn(dsn), dimension=DIMENSION, min_pool_size=1, max_pool_size=1
        )
        try:
            await store.ping()
            pooled = relay.connections[-1]  # the pool's one connection, idle now
            pooled.hold_end()
            async with connected(dsn) as conn:
                await conn.fetchval(TERMINATE_SQL.format(condition="pid <> pg_backend_pid()"))
            await pooled.server_ended.wait()
            await pooled.until_read()

            # The client has the server's FATAL error but not the close: asyncpg
            # refuses the next statement with an InternalClientError.
            with pytest.raises(Unavailable, match="the document store is unavailable; retry later") as raised:
                await store.search_dense("ns", random_vector(), 3)
            assert isinstance(raised.value.__cause__, asyncpg.InternalClientError)
            assert "another operation (2) is in progress" in str(raised.value.__cause__)

            assert await store.search_dense("ns", random_vector(), 3) == []
        finally:
            await store.close()
