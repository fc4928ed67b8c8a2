"""`rag up`, the README's first command: the system from nothing, a question answered, Ctrl-C stops it.

It runs as a user runs it: a process of its own with its own embedded
PostgreSQL and the four services, on four consecutive ports below the range
the OS hands out for port 0 and outgoing connections (32768 and up on Linux),
so they cannot meet the session stack's ports (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from services.common.registry import DEFAULT_PORTS, GATEWAY

SERVING = "serving; press Ctrl-C to stop"


def consecutive_free_ports(count: int) -> int:
    """The first of `count` free ports in a row, below the ephemeral range."""
    rng = random.Random()
    for _ in range(100):
        first = rng.randrange(20_000, 32_000)
        try:
            with contextlib.ExitStack() as bound:
                for port in range(first, first + count):
                    probe = bound.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no {count} free ports in a row between 20000 and 32000")


def read_lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def output_until(
    process: subprocess.Popen[str], lines: queue.Queue[str], marker: str, within_s: float
) -> str:
    deadline = time.monotonic() + within_s
    seen: list[str] = []
    while not any(marker in line for line in seen):
        assert time.monotonic() < deadline, f"no {marker!r} within {within_s} s:\n{''.join(seen)}"
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            assert process.poll() is None, f"exited {process.returncode} before {marker!r}:\n{''.join(seen)}"
    return "".join(seen)


def test_rag_up_ingests_the_samples_answers_with_sources_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    # `rag up --port P` puts each service at P plus its default port's offset from the gateway's.
    port = consecutive_free_ports(max(DEFAULT_PORTS.values()) - GATEWAY.port + 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "rag_cli.main", "up", "--data-dir", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        started = output_until(process, lines, SERVING, within_s=240)
        process.send_signal(signal.SIGINT)
        stopped = output_until(process, lines, "stopped", within_s=60)
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert f"gateway serving on 127.0.0.1:{port}" in started
    assert "ingested 4 documents into 'default'" in started
    assert "Q: When do the nightly PostgreSQL backups run?" in started
    assert "02:00 UTC" in started, "the answer holds the time from the runbook"
    assert "Sources:" in started
    assert "postgres-backup-runbook.md" in started
    assert "Traceback" not in started + stopped
    assert code == 0
