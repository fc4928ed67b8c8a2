"""Phases 1 and 5: the load on a healthy stack, then three times as much against gateways with and
without a bound on calls in flight."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from benchkit.defaults import GATEWAY_MAX_IN_FLIGHT
from benchkit.output import verdict
from benchkit.stack import start_again
from gateway.config import GatewaySettings
from rag_cli.stack import Stack
from reliability_bench.load import CHANNELS, CLIENTS, DEADLINE_S, counts, load_for, percentiles
from reliability_bench.settings import Settings
from reliability_bench.table import Phase, Row, status_columns

# What a stack that keeps up (or refuses at once) answers.
ALLOWED = {"OK", "RESOURCE_EXHAUSTED"}

# Phase 5: clients beyond what the stack serves, against a gateway without a
# bound on calls in flight, one at its defaults and one with a low bound.
OVERLOAD_CLIENTS = 150
LOW_MAX_IN_FLIGHT = GATEWAY_MAX_IN_FLIGHT // 4
# A bound no load here reaches; gRPC's own bound on calls must stay above it (GatewaySettings).
UNBOUNDED = 100_000
_MAX_IN_FLIGHT = GatewaySettings.variable("max_in_flight")
OVERLOAD_LIMITS: tuple[tuple[str, dict[str, str]], ...] = (
    (
        "no bound",
        {_MAX_IN_FLIGHT: str(UNBOUNDED), GatewaySettings.variable("max_concurrent_rpcs"): str(UNBOUNDED + 1)},
    ),
    (f"max in flight {GATEWAY_MAX_IN_FLIGHT} (default)", {}),
    (f"max in flight {LOW_MAX_IN_FLIGHT}", {_MAX_IN_FLIGHT: str(LOW_MAX_IN_FLIGHT)}),
)


async def phase_load(stack: Stack, s: Settings) -> Phase:
    started = time.monotonic()
    load = await load_for(stack.gateway_target, s.load_s)
    seconds = time.monotonic() - started
    rows = []
    for rpc, counter in sorted(counts(load.calls).items()):
        p50, p99 = percentiles([c for c in load.calls if c.rpc == rpc])
        rows.append(Row(rpc, *status_columns(counter), p50, p99, verdict=verdict(set(counter) <= ALLOWED)))
    total = Counter(c.status for c in load.calls)
    p50, p99 = percentiles(load.calls)
    rows.append(Row("all", *status_columns(total), p50, p99, verdict=verdict(set(total) <= ALLOWED)))
    return Phase(
        f"1. load: {CLIENTS} clients over {CHANNELS} channels, {seconds:.0f} s, deadline {DEADLINE_S:.0f} s",
        rows,
        [f"{total['OK'] / seconds:.1f} successful calls/s; criterion: only OK and RESOURCE_EXHAUSTED"],
    )


async def _restart_gateway(stack: Stack, **settings: str) -> None:
    await asyncio.to_thread(stack.stop_service, "gateway")
    await start_again(stack, "gateway", {**stack.service_environment(), **settings})


async def phase_overload(stack: Stack, s: Settings) -> Phase:
    rows = []
    try:
        for label, settings in OVERLOAD_LIMITS:
            await _restart_gateway(stack, **settings)
            load = await load_for(stack.gateway_target, s.overload_s, OVERLOAD_CLIENTS)
            statuses = Counter(c.status for c in load.calls)
            p50, p99 = percentiles(load.calls)
            rows.append(
                Row(
                    label,
                    *status_columns(statuses),
                    p50,
                    p99,
                    check=f"{statuses['OK'] / s.overload_s:.1f} successful calls/s",
                    verdict=verdict(set(statuses) <= ALLOWED),
                )
            )
    finally:
        await _restart_gateway(stack)  # back to the defaults, for the phases after this one
    return Phase(
        f"5. overload: {OVERLOAD_CLIENTS} clients, {s.overload_s:.0f} s each, deadline {DEADLINE_S:.0f} s",
        rows,
        [
            "p50/p99 of the successful calls; a refused client waits as long as the gateway's retry hint",
            "criterion: only OK and RESOURCE_EXHAUSTED (a DEADLINE_EXCEEDED is a call queued too long)",
        ],
    )
