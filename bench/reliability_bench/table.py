"""A phase's table: its rows, its notes, and how the report prints them."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from benchkit.machine import load_average
from benchkit.output import MISS, PASS


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


FAIL = "FAIL"


@dataclass
class Phase:
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """PASS when no row missed its criterion, FAIL otherwise."""
        return FAIL if any(row.verdict == MISS for row in self.rows) else PASS


def fmt_counts(counter: Counter[str]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counter.most_common()) or "-"


def status_columns(counter: Counter[str]) -> tuple[int, str]:
    """A row's calls and statuses columns, from the statuses of its calls."""
    return sum(counter.values()), fmt_counts(counter)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def report(phases: Mapping[str, Phase], seconds: float, quick: bool) -> None:
    """Every phase's table under its title and outcome, then the outcomes by phase name."""
    print(
        f"Reliability of the stack ({time.strftime('%Y-%m-%d')}{', --quick' if quick else ''}); "
        f"{os.cpu_count()} cores, load average {load_average()} at the end"
    )
    for phase in phases.values():
        print(f"\n{phase.outcome}  {phase.title}")
        print(f"  {'':<32}{'calls':>6}{'p50 ms':>8}{'p99 ms':>8}  verdict  statuses | recovery | check")
        for row in phase.rows:
            extras = " | ".join(x for x in (row.recovery, row.check) if x)
            print(
                f"  {row.label:<32}{row.calls:>6}{_ms(row.p50):>8}{_ms(row.p99):>8}  {row.verdict or '':<7}  "
                f"{row.statuses}{' | ' + extras if extras else ''}"
            )
        for note in phase.notes:
            print(f"  {note}")
    outcomes = ", ".join(f"{name} {phase.outcome}" for name, phase in phases.items())
    print(f"\n{outcomes}; {seconds / 60:.1f} minutes in all")
