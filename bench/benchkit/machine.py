"""What the machine is and how busy it is, for the header of a benchmark's report."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path


def describe() -> str:
    """Its cores and CPU model, e.g. "2 cores (AMD EPYC 7B13)"."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model})"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. "4.0, 4.2, 3.4"."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())
