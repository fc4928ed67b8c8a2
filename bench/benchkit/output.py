"""How a benchmark speaks: progress on stderr, so that stdout holds only the report, and verdicts."""

from __future__ import annotations

import sys

PASS = "PASS"
MISS = "MISS"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def verdict(passed: bool) -> str:
    return PASS if passed else MISS
