"""The whole stack, or one service of it, started as `rag up` starts it, on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from rag_cli.stack import Stack, free_port
from services.common.registry import BY_NAME, DEFAULT_PORTS, SERVICES

# In start order.
SERVICE_NAMES = tuple(service.name for service in SERVICES)
# A service's first start may export its model (the embedder's ONNX); a restart finds it cached.
FIRST_START_TIMEOUT_S = 300.0
RESTART_TIMEOUT_S = 120.0


def free_ports() -> dict[str, int]:
    return {name: free_port() for name in DEFAULT_PORTS}


@contextlib.contextmanager
def data_directory(given: Path | None, prefix: str) -> Iterator[Path]:
    """`given`, made if missing and kept afterwards (a later run reuses what is in it); else a
    temporary directory named `prefix`..., gone afterwards."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as made:
        yield Path(made)


@contextlib.contextmanager
def running_stack(prefix: str, env: Mapping[str, str]) -> Iterator[Stack]:
    """Every service and an embedded PostgreSQL, in a temporary directory named `prefix`..."""
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as data_dir,
        Stack(data_dir=Path(data_dir), ports=free_ports(), env=env) as stack,
    ):
        yield stack


@contextlib.contextmanager
def running_service(name: str, data_dir: Path, env: Mapping[str, str]) -> Iterator[Stack]:
    """One service alone, with the environment the stack would give it; its logs go to `data_dir`."""
    stack = Stack(data_dir=data_dir, ports=free_ports(), env=env)
    stack.log_path(name).parent.mkdir(parents=True, exist_ok=True)
    try:
        stack.start_service(name, BY_NAME[name].module, stack.service_environment())
        stack.wait_until_serving(name, time.monotonic() + FIRST_START_TIMEOUT_S)
        yield stack
    finally:
        stack.stop()


async def start_again(stack: Stack, name: str, environment: Mapping[str, str]) -> None:
    """Starts a stopped (or killed) service on its port and waits until it is SERVING."""
    stack.start_service(name, BY_NAME[name].module, environment)
    await asyncio.to_thread(stack.wait_until_serving, name, time.monotonic() + RESTART_TIMEOUT_S)
