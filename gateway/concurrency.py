"""Time and tasks in a gateway call: the caller's deadline shared out to the downstream calls,
running coroutines side by side (run_all), and letting a write finish (not_cut_short)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from services.common.errors import DeadlineExceeded

T = TypeVar("T")


class Deadline:
    """The caller's deadline, shared out to each downstream call."""

    def __init__(self, seconds: float) -> None:
        self._expires = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._expires - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the request deadline passed before the gateway finished")
        return left


async def run_all(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Runs the coroutines concurrently; their results in order, or the first failure as itself,
    with the others cancelled and finished first, so no call is left running."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coroutine) for coroutine in coroutines]
    except ExceptionGroup as failed:
        # The first failure is the cause, later ones mostly its echoes. It is
        # raised as itself, its own cause kept, for the error interceptor to map.
        first = failed.exceptions[0]
        raise first from first.__cause__
    return [task.result() for task in tasks]


async def not_cut_short(coroutine: Coroutine[Any, Any, T]) -> T:
    """Awaits the coroutine to its end even if the caller is cancelled meanwhile, then passes
    the cancellation on.

    For writes: a cancelled Upsert may still commit on the retriever after the
    gateway has answered, and the caller could not tell what was stored. Its
    deadline bounds the wait.
    """
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller gets
        raise
