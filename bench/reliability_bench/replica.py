"""Phase 7: the retriever's read replica killed -9 and started again under load.

A streaming standby of the stack's embedded PostgreSQL (standby.py) becomes the
retriever's read replica: the retriever is restarted as phase 2 restarts a
service, with the stack's environment plus RETRIEVER_READ_DATABASE_URLS. Once
its log says the replica is in rotation, phase 1's load runs; a window in, the
standby's postmaster gets SIGKILL; a window later it is started again, and the
load goes on until the retriever's log says the replica is back in rotation,
then one more window. Reads that fail on the replica, and those made while it
is out of rotation, go to the primary (store/chunk_store.py), so the load's
callers see nothing but OK and the gateway's RESOURCE_EXHAUSTED throughout.

That reads really went to the replica is shown by the standby's own counters:
its pg_stat_user_tables counts scans of rag_chunks, which only the retriever's
searches make there, before the kill and again after the restart.
Afterwards the retriever runs again without the replica and the standby is
stopped and removed, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchkit.output import log, verdict
from benchkit.stack import start_again
from rag_cli.stack import Stack
from reliability_bench.load import Load, percentiles, run_load
from reliability_bench.postgres_control import embedded_postgres
from reliability_bench.settings import Settings
from reliability_bench.standby import CHILDREN_EXIT_S, Standby
from reliability_bench.steady import ALLOWED
from reliability_bench.table import Phase, Row, fmt_counts
from services.common.registry import RETRIEVER
from services.retriever.limits import DEFAULT_MAX_REPLICA_LAG_MS

READ_REPLICAS_VARIABLE = f"{RETRIEVER.env_prefix}READ_DATABASE_URLS"
# The retriever checks its replicas every second; a started standby replays what it missed first.
ROTATION_TIMEOUT_S = 60.0
LOG_POLL_S = 0.2
# The retriever's log lines on its replicas' rotation (services/retriever/store/replicas.py).
_IN_ROTATION = re.compile(r"read replica \S+ in rotation")
_RETRIEVER_UNAVAILABLE = re.compile(r"RetrieverService/\w+ failed: UNAVAILABLE")
_REPLICA_EVENTS = {
    "in rotation": _IN_ROTATION,
    "failed a read": re.compile(r"read replica \S+ failed a read"),
    "checked out of rotation": re.compile(r"read replica \S+ out of rotation"),
}


@dataclass(frozen=True)
class Edge:
    """A window's edge: when (time.monotonic()) and how far the retriever's log had come (bytes)."""

    at: float
    log_offset: int


@dataclass(frozen=True)
class Timeline:
    """The load's windows and what was seen at their edges."""

    load_start: Edge
    killed: Edge
    starting: Edge  # pg_ctl start begun
    started: float  # the standby takes connections
    back: Edge | None  # the retriever's log said "in rotation" again; None: not within ROTATION_TIMEOUT_S
    end: Edge
    children_killed: int
    scans: tuple[int, int, int, int]  # before the load, at the kill, back in rotation, at the end


class RetrieverLog:
    """The retriever's log file, read between offsets."""

    def __init__(self, stack: Stack) -> None:
        self._path = stack.log_path("retriever")

    def edge(self) -> Edge:
        return Edge(time.monotonic(), self._path.stat().st_size)

    def text(self, start: Edge, end: Edge | None = None) -> str:
        with self._path.open("rb") as file:
            file.seek(start.log_offset)
            data = file.read() if end is None else file.read(end.log_offset - start.log_offset)
        return data.decode(errors="replace")

    async def in_rotation(self, since: Edge, timeout_s: float) -> Edge | None:
        """When a line written after `since` said a replica is in rotation; None: none within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _IN_ROTATION.search(self.text(since)):
                return self.edge()
            await asyncio.sleep(LOG_POLL_S)
        return None


async def _restart_retriever(stack: Stack, extra: Mapping[str, str]) -> None:
    """The retriever stopped, then started with the stack's environment plus `extra`."""
    with contextlib.suppress(KeyError):  # not running: a start that failed
        await asyncio.to_thread(stack.stop_service, "retriever")
    await start_again(stack, "retriever", {**stack.service_environment(), **extra})


async def _outage(stack: Stack, s: Settings, standby: Standby, dsn: str) -> tuple[Load, Timeline]:
    """The load, the kill and the start as the module docstring tells."""
    window = s.kill_window_s / 3
    retriever_log = RetrieverLog(stack)
    load = Load()
    scans_start = await standby.chunk_scans(dsn)
    load_start = retriever_log.edge()
    task = asyncio.create_task(run_load(stack.gateway_target, load))
    try:
        await asyncio.sleep(window)
        scans_kill = await standby.chunk_scans(dsn)
        killed = retriever_log.edge()
        children_killed = await asyncio.to_thread(standby.kill)
        log(f"  standby killed ({children_killed} children left to kill)")
        await asyncio.sleep(window)
        # From here on: a line from before (a check that had begun before the kill) is no return.
        starting = retriever_log.edge()
        await asyncio.to_thread(standby.start)
        started = time.monotonic()
        log(f"  standby started in {started - starting.at:.1f} s")
        back = await retriever_log.in_rotation(starting, ROTATION_TIMEOUT_S)
        scans_back = await standby.chunk_scans(dsn)
        await asyncio.sleep(window)
        scans_end = await standby.chunk_scans(dsn)
    finally:  # stopped however this ends: a load left running would go on into the next phase
        load.stop.set()
        await task
    timeline = Timeline(
        load_start,
        killed,
        starting,
        started,
        back,
        retriever_log.edge(),
        children_killed,
        (scans_start, scans_kill, scans_back, scans_end),
    )
    return load, timeline


@dataclass(frozen=True)
class Window:
    name: str  # short, for the notes
    label: str  # the row's
    start: Edge
    end: Edge


def _windows(t: Timeline) -> tuple[Window, Window, Window, Window]:
    back = t.back or t.end
    return (
        Window("before", "before: replica in rotation", t.load_start, t.killed),
        Window("down", "replica killed (down)", t.killed, t.starting),
        Window("starting", "replica starting, out of rotation", t.starting, back),
        Window("after", "after: back in rotation", back, t.end),
    )


def _row(load: Load, window: Window, check: str = "", checked: bool = True) -> Row:
    during = load.between(window.start.at, window.end.at)
    statuses = Counter(c.status for c in during)
    p50, p99 = percentiles(during)
    return Row(
        window.label,
        len(during),
        fmt_counts(statuses),
        p50,
        p99,
        check=check,
        verdict=verdict(set(statuses) <= ALLOWED and checked),
    )


def _rows(load: Load, t: Timeline) -> list[Row]:
    start, kill, back, end = t.scans
    before, down, starting, after = _windows(t)
    searches = sum(
        1 for c in load.between(down.start.at, down.end.at) if c.rpc == "Search" and c.status == "OK"
    )
    rotation = (
        f"in rotation {t.back.at - t.started:.1f} s after the start"
        if t.back is not None
        else f"not in rotation within {ROTATION_TIMEOUT_S:.0f} s"
    )
    return [
        _row(load, before, f"standby's rag_chunks scans {start} -> {kill}", kill > start),
        _row(load, down, f"{searches} Searches OK"),
        _row(load, starting, rotation),
        _row(load, after, f"standby's rag_chunks scans {back} -> {end}", t.back is not None and end > back),
        _row(load, Window("all", "all", t.load_start, t.end)),
    ]


def _retriever_notes(retriever_log: RetrieverLog, t: Timeline) -> list[str]:
    """What the retriever logged: its replica's rotation during the load, its own UNAVAILABLE per window."""
    events = retriever_log.text(t.load_start, t.end)
    rotation = Counter({name: len(pattern.findall(events)) for name, pattern in _REPLICA_EVENTS.items()})
    unavailable = ", ".join(
        f"{w.name} {len(_RETRIEVER_UNAVAILABLE.findall(retriever_log.text(w.start, w.end)))}"
        for w in _windows(t)
    )
    return [
        f"the retriever's replica lines during the load: {fmt_counts(rotation)}",
        f"the retriever's own UNAVAILABLE answers (retried by the gateway's channel): {unavailable}",
    ]


def _unexpected(load: Load) -> list[str]:
    """One example of each status other than OK/RESOURCE_EXHAUSTED, per RPC."""
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    for c in load.calls:
        if c.status not in ALLOWED:
            n, detail = seen.get((c.rpc, c.status), (0, c.detail))
            seen[(c.rpc, c.status)] = (n + 1, detail)
    return [f"{rpc} {status} x{n}: {detail[:160]}" for (rpc, status), (n, detail) in seen.items()]


async def phase_replica(stack: Stack, s: Settings) -> Phase:
    postmaster = embedded_postgres(stack).postmaster()
    if postmaster is None or postmaster.socket_dir is None:
        raise RuntimeError("the stack's PostgreSQL is not running on a socket directory")
    server = stack.embedded_postgres
    standby = Standby(
        stack.data_dir / "standby", Path(server.bin_path), server.system_user, postmaster.socket_dir
    )
    dsn = stack.database_url_in_use
    retriever_log = RetrieverLog(stack)
    try:
        await asyncio.to_thread(standby.build)
        await asyncio.to_thread(standby.start)
        restarted = retriever_log.edge()
        await _restart_retriever(stack, {READ_REPLICAS_VARIABLE: standby.dsn(dsn)})
        if await retriever_log.in_rotation(restarted, ROTATION_TIMEOUT_S) is None:
            raise RuntimeError(f"the standby was not in rotation within {ROTATION_TIMEOUT_S:.0f} s")
        log("  retriever reading from the standby")
        load, timeline = await _outage(stack, s, standby, dsn)
    finally:
        await _restart_retriever(stack, {})
        await asyncio.to_thread(standby.stop)
        shutil.rmtree(standby.folder, ignore_errors=True)
    return Phase(
        "7. read replica killed -9 and started again under load (the retriever reading from a standby)",
        _rows(load, timeline),
        [
            "calls: those overlapping each window; p50/p99 of their successes; criterion: only OK and"
            " RESOURCE_EXHAUSTED in every window (reads fall back to the primary), the standby's scans of"
            " rag_chunks growing before the kill and after it is back (its crash recovery resets them)",
            f"standby: pg_basebackup of the stack's PostgreSQL, {READ_REPLICAS_VARIABLE} set to it, max lag"
            f" {DEFAULT_MAX_REPLICA_LAG_MS} ms (default); SIGKILL to its postmaster"
            f" ({timeline.children_killed} children still there after {CHILDREN_EXIT_S:.0f} s),"
            f" down {timeline.starting.at - timeline.killed.at:.1f} s,"
            f" pg_ctl start {timeline.started - timeline.starting.at:.1f} s",
            *_retriever_notes(retriever_log, timeline),
            *_unexpected(load),
        ],
    )
