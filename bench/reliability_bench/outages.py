"""Phases 2 and 3: each service killed and restarted under load, then PostgreSQL stopped and started."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from benchkit.output import log, verdict
from benchkit.stack import SERVICE_NAMES, start_again
from rag_cli.stack import Stack
from reliability_bench.load import RPCS, Call, Load, percentiles, run_load
from reliability_bench.postgres_control import embedded_postgres
from reliability_bench.settings import Settings
from reliability_bench.table import Phase, Row, fmt_counts

RECOVERY_TARGET_S = 5.0
# What a call may get while a part is down: served, the part's absence, or a refusal for load (the
# gateway's bound on calls in flight is below the load's clients).
DURING_OUTAGE = {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"}
OUTAGE_S = 1.0
# Load before each outage starts.
LEAD_IN_S = 2.0

T = TypeVar("T")


@dataclass(frozen=True)
class Outage:
    down: float  # when the service went down
    restarted: float  # when it was started again
    ready: float  # when it was SERVING (or PostgreSQL ready) again


async def under_load(stack: Stack, s: Settings, outage: Callable[[], Awaitable[T]]) -> tuple[Load, T]:
    """`outage` run LEAD_IN_S into the load, which goes on until kill_window_s in all."""
    load = Load()
    task = asyncio.create_task(run_load(stack.gateway_target, load))
    await asyncio.sleep(LEAD_IN_S)
    outcome = await outage()
    await asyncio.sleep(s.kill_window_s - LEAD_IN_S)
    load.stop.set()
    await task
    return load, outcome


async def kill(stack: Stack, name: str) -> None:
    """SIGKILL, and wait until the process is gone."""
    process = stack.process(name)
    os.kill(process.pid, signal.SIGKILL)
    await asyncio.to_thread(process.wait)


def _first_ok_after(calls: Sequence[Call], rpc: str, after: float) -> float | None:
    times = [c.ended - after for c in calls if c.rpc == rpc and c.started >= after and c.status == "OK"]
    return min(times) if times else None


def _recovery(calls: Sequence[Call], ready: float) -> tuple[str, bool]:
    parts = []
    passed = True
    for rpc in RPCS:
        seconds = _first_ok_after(calls, rpc, ready)
        if seconds is None:
            parts.append(f"{rpc} never")
            passed = False
        else:
            parts.append(f"{rpc} {seconds:.1f}")
            passed = passed and seconds <= RECOVERY_TARGET_S
    return ", ".join(parts), passed


def _outage_row(label: str, load: Load, down: float, ready: float) -> Row:
    during = load.between(down, ready)
    counter = Counter(c.status for c in during)
    # After SERVING: UNAVAILABLE is allowed for calls started in the recovery window, nothing else.
    after_bad = Counter(
        c.status
        for c in load.calls
        if c.started >= ready
        and c.status not in ("OK", "RESOURCE_EXHAUSTED")
        and not (c.status == "UNAVAILABLE" and c.started < ready + RECOVERY_TARGET_S)
    )
    recovery, recovered = _recovery(load.calls, ready)
    clean = set(counter) <= DURING_OUTAGE and not after_bad
    p50, p99 = percentiles(during)
    statuses = fmt_counts(counter) + (f"; after: {fmt_counts(after_bad)}" if after_bad else "")
    return Row(
        label,
        len(during),
        statuses,
        p50,
        p99,
        recovery=f"down {ready - down:.1f} s; {recovery}",
        verdict=verdict(clean and recovered),
    )


def _unexpected(name: str, load: Load, since: float) -> list[str]:
    """One example of each status other than OK/UNAVAILABLE/RESOURCE_EXHAUSTED, per RPC."""
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    for c in load.calls:
        if c.ended >= since and c.status not in DURING_OUTAGE:
            n, detail = seen.get((c.rpc, c.status), (0, c.detail))
            seen[(c.rpc, c.status)] = (n + 1, detail)
    return [f"{name}: {rpc} {status} x{n}: {detail[:160]}" for (rpc, status), (n, detail) in seen.items()]


async def phase_kills(stack: Stack, s: Settings) -> Phase:
    environment = stack.service_environment()
    rows = []
    notes: list[str] = []
    for name in SERVICE_NAMES:

        async def kill_and_restart(name: str = name) -> Outage:
            down = time.monotonic()
            await kill(stack, name)
            await asyncio.sleep(OUTAGE_S)
            restarted = time.monotonic()
            await start_again(stack, name, environment)
            ready = time.monotonic()
            log(f"  {name}: killed, restarted, SERVING after {ready - restarted:.1f} s")
            return Outage(down, restarted, ready)

        load, outage = await under_load(stack, s, kill_and_restart)
        row = _outage_row(f"kill -9 {name}", load, outage.down, outage.ready)
        row.recovery += f" (start-up {outage.ready - outage.restarted:.1f} s)"
        rows.append(row)
        notes.extend(_unexpected(name, load, outage.ready))
    return Phase(
        "2. kill -9 each service under load, restarted with the same environment and port",
        rows,
        [
            "calls: those overlapping kill..SERVING; p50/p99 of their successes; recovery: SERVING to the"
            " first success of each RPC started after it (target <= 5 s)",
            "criterion: only OK/UNAVAILABLE/RESOURCE_EXHAUSTED during the outage; after SERVING, UNAVAILABLE"
            " only in the first 5 s, then OK/RESOURCE_EXHAUSTED (DEADLINE_EXCEEDED counts as hung);"
            " recovery <= 5 s",
            "'after:' lists the statuses that break the rule after SERVING",
            *notes,
        ],
    )


async def phase_postgres(stack: Stack, s: Settings) -> Phase:
    log_start = len(stack.log_path("retriever").read_text(errors="replace"))
    postgres = embedded_postgres(stack)
    uri = postgres.uri()

    async def restart() -> Outage:
        """Down by fast shutdown, OUTAGE_S, up again: neither step forks this process (postgres_control)."""
        down = time.monotonic()
        await asyncio.to_thread(postgres.stop)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(postgres.start)
        return Outage(down, down, time.monotonic())

    load, outage = await under_load(stack, s, restart)
    same_uri = postgres.uri() == uri
    row = _outage_row("fast shutdown, start", load, outage.down, outage.ready)
    log_text = stack.log_path("retriever").read_text(errors="replace")[log_start:]
    errors = Counter(line.strip()[:160] for line in log_text.splitlines() if "Error" in line and ":" in line)
    return Phase(
        "3. PostgreSQL restart under load (no service restarted)",
        [row],
        [
            f"PostgreSQL down {outage.ready - outage.down:.1f} s (SIGINT to the postmaster, {OUTAGE_S:.0f} s,"
            f" pg_ctl start from a helper process); same URI after: {same_uri}",
            *_unexpected("postgres", load, outage.down),
            *(f"retriever log ({n}x): {line}" for line, n in errors.most_common(4)),
        ],
    )
