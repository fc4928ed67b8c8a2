"""The cores some groups of processes, and the whole machine, used while a round ran."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Cores:
    by_group: dict[str, float]  # cores each named group of processes used on average
    machine: float  # cores busy on the whole machine, ours included

    @property
    def others(self) -> float:
        return max(0.0, self.machine - sum(self.by_group.values()))


class CpuMeter:
    """Cores used by groups of processes and by the whole machine between creation and stop().

    A process that ends meanwhile (a PostgreSQL backend) counts for nothing: only what
    the processes alive at both samples used is summed.
    """

    def __init__(self, groups: Mapping[str, Sequence[psutil.Process]]) -> None:
        self._groups = groups
        self._start = self._sample()

    def _sample(self) -> tuple[float, dict[str, dict[int, float]], float]:
        used = {name: _cpu_s(processes) for name, processes in self._groups.items()}
        return time.perf_counter(), used, _machine_busy_s()

    def stop(self) -> Cores:
        (t0, used0, busy0), (t1, used1, busy1) = self._start, self._sample()
        by_group = {
            name: sum(used1[name][pid] - used0[name][pid] for pid in used0[name].keys() & used1[name].keys())
            / (t1 - t0)
            for name in used0
        }
        return Cores(by_group, (busy1 - busy0) / (t1 - t0))


def _cpu_s(processes: Sequence[psutil.Process]) -> dict[int, float]:
    """User and system seconds of each process still running, by pid."""
    used = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        used[process.pid] = float(times.user + times.system)
    return used


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    # Stolen time counts as busy: the hypervisor gave the core to someone else.
    busy = (
        t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
    )
    return float(busy)
