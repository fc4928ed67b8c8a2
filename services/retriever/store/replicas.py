"""Read replicas: which ones may serve a read, checked every second against the primary.

PostgreSQL's streaming replicas (a CloudNativePG `-ro` service, or standbys
listed one by one) serve searches and listings; writes, and the reads that
decide a write (content hashes before an upsert, the index version the answer
cache keys on), stay on the primary. A replica is in rotation while it answers
and its replay lags the primary by at most `max_lag_ms`: the check reads the
primary's WAL position, then asks the replica whether it has replayed that far
and, if not, how long ago it last replayed a transaction. A replica that fails
a read is taken out at once and checked again with the others a second later.
With no replica in rotation, reads go to the primary.

Read-your-writes does not rest on the lag: a search that must see a given
index version reads the namespace's version in its own snapshot and, when the
replica is behind it, is run again on the primary (see ChunkStore.search).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0

_PRIMARY_POSITION_SQL = "SELECT pg_current_wal_lsn()"

# NULL replay position: not a standby (replication off): nothing to lag.
_REPLICA_LAG_SQL = """
SELECT CASE
    WHEN pg_last_wal_replay_lsn() IS NULL OR pg_last_wal_replay_lsn() >= $1::pg_lsn THEN 0.0
    ELSE coalesce(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000, 'infinity')
END AS lag_ms
"""


@dataclass
class Replica:
    """One read replica's pool and whether reads may go to it."""

    name: str
    pool: asyncpg.Pool
    in_rotation: bool = False
    lag_ms: float | None = None


class ReadReplicas:
    """The replicas a read may go to, in turn; empty when there are none."""

    def __init__(self, replicas: list[Replica], max_lag_ms: int) -> None:
        self._replicas = replicas
        self._max_lag_ms = max_lag_ms
        self._turn = itertools.count()

    @property
    def all(self) -> list[Replica]:
        return list(self._replicas)

    def in_turn(self) -> list[Replica]:
        """The replicas in rotation, starting with the next one's turn."""
        ready = [r for r in self._replicas if r.in_rotation]
        if not ready:
            return []
        start = next(self._turn) % len(ready)
        return ready[start:] + ready[:start]

    def failed(self, replica: Replica, error: BaseException) -> None:
        if replica.in_rotation:
            log.warning("read replica %s failed a read (%s); out of rotation", replica.name, error)
        replica.in_rotation = False

    async def check(self, primary: asyncpg.Pool) -> None:
        """Put each replica in or out of rotation by whether it answers and how far it lags."""
        if not self._replicas:
            return
        async with primary.acquire() as conn:
            position = await conn.fetchval(_PRIMARY_POSITION_SQL)
        await asyncio.gather(*(self._check_one(replica, position) for replica in self._replicas))

    async def _check_one(self, replica: Replica, position: str) -> None:
        try:
            async with replica.pool.acquire() as conn:
                lag_ms = float(await conn.fetchval(_REPLICA_LAG_SQL, position))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            self._set(replica, False, None, f"unreachable ({type(error).__name__})")
            return
        fresh = lag_ms <= self._max_lag_ms
        self._set(replica, fresh, lag_ms, f"lagging {lag_ms:.0f} ms" if not fresh else "")

    def _set(self, replica: Replica, in_rotation: bool, lag_ms: float | None, why: str) -> None:
        if in_rotation != replica.in_rotation:
            if in_rotation:
                log.info("read replica %s in rotation (lag %.0f ms)", replica.name, lag_ms or 0.0)
            else:
                log.warning("read replica %s out of rotation: %s", replica.name, why)
        replica.in_rotation = in_rotation
        replica.lag_ms = lag_ms

    async def watch(self, primary: asyncpg.Pool) -> None:
        """Check every CHECK_INTERVAL_S for as long as the store is open."""
        while True:
            try:
                await self.check(primary)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                # The primary is down: leave the rotation as it is, reads fall back as they fail.
                log.warning("could not check the read replicas against the primary (%s)", error)
            await asyncio.sleep(CHECK_INTERVAL_S)

    async def close(self) -> None:
        await asyncio.gather(*(r.pool.close() for r in self._replicas), return_exceptions=True)
