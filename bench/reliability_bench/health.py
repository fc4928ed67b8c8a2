"""The stack checked between phases, and what is broken restarted, so that one phase's failure stays its own.

Healthy: PostgreSQL takes a query, and each of the four services runs and
answers its health check SERVING. A part that is not within SETTLE_S (a
service that has just lost a dependency may say NOT_SERVING for a moment) is
restarted: PostgreSQL by postgres_control, a service by Stack.start_service
with the stack's own environment, so a gateway a phase started with other
settings is back at the defaults too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchkit.stack import SERVICE_NAMES, start_again
from rag_cli.stack import Stack
from reliability_bench.postgres_control import EmbeddedPostgres

POSTGRES = "PostgreSQL"
SETTLE_S = 10.0
CHECK_TIMEOUT_S = 2.0
RECHECK_S = 0.5


async def _serving(stack: Stack, name: str) -> bool:
    try:
        process = stack.process(name)
    except KeyError:  # stopped by a phase and never started again
        return False
    if process.poll() is not None:
        return False
    async with grpc.aio.insecure_channel(stack.target(name)) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def broken_parts(stack: Stack, postgres: EmbeddedPostgres) -> list[str]:
    """The parts not healthy now: POSTGRES and service names, in start order."""
    broken = [] if await postgres.ready() else [POSTGRES]
    for name in SERVICE_NAMES:
        if not await _serving(stack, name):
            broken.append(name)
    return broken


async def _still_broken(stack: Stack, postgres: EmbeddedPostgres) -> list[str]:
    """The parts that stay unhealthy for SETTLE_S."""
    settle_by = time.monotonic() + SETTLE_S
    while broken := await broken_parts(stack, postgres):
        if time.monotonic() > settle_by:
            return broken
        await asyncio.sleep(RECHECK_S)
    return []


async def restore(stack: Stack, postgres: EmbeddedPostgres) -> list[str]:
    """Restarts whatever is broken, PostgreSQL first; returns what was restarted (nothing: it was healthy)."""
    broken = await _still_broken(stack, postgres)
    if POSTGRES in broken:
        await asyncio.to_thread(postgres.stop)
        await asyncio.to_thread(postgres.start)
    for name in SERVICE_NAMES:
        if name in broken:
            with contextlib.suppress(KeyError):  # not running at all
                await asyncio.to_thread(stack.stop_service, name)
            await start_again(stack, name, stack.service_environment())
    return broken
