"""CPU accounting: the cores some processes and the whole machine used while a figure was measured."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import psutil

# This process: the in-process ceiling and every client run in it.
BENCH = psutil.Process()


@dataclass(frozen=True)
class Cores:
    by_process: dict[str, float]  # cores each named process used on average
    machine: float  # cores busy on the whole machine, ours included

    @property
    def others(self) -> float:
        return max(0.0, self.machine - sum(self.by_process.values()))


class CpuMeter:
    """Cores used by some processes, and by the whole machine, between creation and stop()."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self._processes = processes
        self._start = self._sample()

    def _sample(self) -> tuple[float, dict[str, float], float]:
        used = {name: sum(p.cpu_times()[:2]) for name, p in self._processes.items()}
        return time.perf_counter(), used, _machine_busy_s()

    def stop(self) -> Cores:
        (t0, used0, busy0), (t1, used1, busy1) = self._start, self._sample()
        return Cores({n: (used1[n] - used0[n]) / (t1 - t0) for n in used0}, (busy1 - busy0) / (t1 - t0))


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    # Stolen time counts as busy: the hypervisor gave the core to someone else.
    busy = (
        t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
    )
    return float(busy)


@dataclass
class Tally:
    """Texts (or chunks) done over measured seconds, summed over rounds, with the cores they took."""

    texts: int = 0
    seconds: float = 0.0
    core_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    machine_core_seconds: float = 0.0
    rates: list[float] = field(default_factory=list)  # each round's

    def add(self, texts: int, seconds: float, cores: Cores) -> None:
        self.texts += texts
        self.seconds += seconds
        for name, used in cores.by_process.items():
            self.core_seconds[name] += used * seconds
        self.machine_core_seconds += cores.machine * seconds
        self.rates.append(texts / seconds)

    @property
    def rate(self) -> float:
        return self.texts / self.seconds

    @property
    def cores(self) -> Cores:
        used = {name: s / self.seconds for name, s in self.core_seconds.items()}
        return Cores(used, self.machine_core_seconds / self.seconds)
