"""Pinning a process to one core with taskset, and checking that every thread of it stayed there."""

from __future__ import annotations

import subprocess
from pathlib import Path


def pin(pid: int, core: int) -> None:
    """Every thread of `pid` to `core`; threads started later inherit it from the thread that starts them."""
    subprocess.run(
        ["taskset", "--all-tasks", "--cpu-list", "--pid", str(core), str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def thread_cores(pid: int) -> set[str]:
    """The distinct CPU lists the process's threads may run on, e.g. {"0"} for a process pinned to core 0."""
    lists = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                lists.add(line.split(":", 1)[1].strip())
    return lists
