"""Closed-loop load: N clients, each making its next call as soon as the last is answered,
in rounds in which every path at a level takes its turn, so that each path meets the same
background load (the machine is shared)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import psutil

from benchkit.cpu import CpuMeter, Tally
from search_bench.paths import Call, Sample
from search_bench.settings import Settings


@dataclass
class Level:
    """One path at one number of clients, over all its rounds."""

    clients: int
    tally: Tally = field(default_factory=Tally)
    samples: list[Sample] = field(default_factory=list)


class QueryCycle:
    """The queries' indexes in turn, every query once before any repeats."""

    def __init__(self, count: int) -> None:
        self._next: Iterator[int] = itertools.cycle(range(count))

    def __next__(self) -> int:
        return next(self._next)


async def one_round(
    call: Call,
    clients: int,
    queries: QueryCycle,
    processes: Mapping[str, psutil.Process],
    s: Settings,
    level: Level,
) -> None:
    """`clients` callers for round_warmup_s, then round_s measured: the calls that started and ended in it."""
    calls: list[tuple[float, float, Sample]] = []
    closing = asyncio.Event()

    async def client() -> None:
        while not closing.is_set():
            started = time.perf_counter()
            sample = await call(next(queries))
            calls.append((started, time.perf_counter(), sample))

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    try:
        await asyncio.sleep(s.round_warmup_s)
        meter = CpuMeter(dict(processes))
        window_start = time.perf_counter()
        await asyncio.sleep(s.round_s)
        cores = meter.stop()
        window_end = time.perf_counter()
    finally:
        closing.set()
        await asyncio.gather(*tasks)
    answered = sum(1 for _, end, _ in calls if window_start <= end <= window_end)
    level.tally.add(answered, window_end - window_start, cores)
    level.samples.extend(
        sample for start, end, sample in calls if window_start <= start and end <= window_end
    )


async def alternate(
    paths: Mapping[str, Call],
    clients: int,
    queries: QueryCycle,
    processes: Mapping[str, psutil.Process],
    s: Settings,
) -> dict[str, Level]:
    """Every path at `clients`, rounds taking turns; each path starts a different round first."""
    levels = {name: Level(clients) for name in paths}
    names = list(paths)
    for round_number in range(s.rounds):
        turn = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in turn:
            await one_round(paths[name], clients, queries, processes, s, levels[name])
    return levels
