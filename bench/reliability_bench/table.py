"""A phase's table: its rows, its notes, and how the report prints them."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchkit.machine import load_average


@dataclass
class Row:
    """One line of a phase's table."""

    label: str
    calls: int
    statuses: str
    p50: float = float("nan")
    p99: float = float("nan")
    recovery: str = ""
    check: str = ""
    verdict: str = ""


@dataclass
class Phase:
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


def fmt_counts(counter: Counter[str]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counter.most_common()) or "-"


def status_columns(counter: Counter[str]) -> tuple[int, str]:
    """A row's calls and statuses columns, from the statuses of its calls."""
    return sum(counter.values()), fmt_counts(counter)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def report(phases: Sequence[Phase], seconds: float, quick: bool) -> None:
    print(
        f"Reliability of the stack ({time.strftime('%Y-%m-%d')}{', --quick' if quick else ''}); "
        f"{os.cpu_count()} cores, load average {load_average()} at the end"
    )
    for phase in phases:
        print(f"\n{phase.title}")
        print(f"  {'':<26}{'calls':>6}{'p50 ms':>8}{'p99 ms':>8}  verdict  statuses | recovery | check")
        for row in phase.rows:
            extras = " | ".join(x for x in (row.recovery, row.check) if x)
            print(
                f"  {row.label:<26}{row.calls:>6}{_ms(row.p50):>8}{_ms(row.p99):>8}  {row.verdict or '':<7}  "
                f"{row.statuses}{' | ' + extras if extras else ''}"
            )
        for note in phase.notes:
            print(f"  {note}")
    print(f"\n{seconds / 60:.1f} minutes in all")
