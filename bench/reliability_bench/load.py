"""The load: closed-loop clients mixing Search, Ask and one-document ingests, every call recorded."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from benchkit import rpc
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.metrics import percentile
from reliability_bench.documents import text, words
from services.common.channel_config import service_config

CLIENTS = 50
CHANNELS = 5
DEADLINE_S = 10.0
# Share of the load's calls per RPC.
MIX = (("Search", 0.5), ("Ask", 0.4), ("Ingest", 0.1))
RPCS = tuple(name for name, _ in MIX)
LOAD_NAMESPACE = "reliability-load"
# A failing call is followed by this pause where the server gives no retry hint.
DEFAULT_PAUSE_S = 0.05


@dataclass
class Call:
    rpc: str
    started: float
    ended: float
    status: str
    detail: str = ""


@dataclass
class Load:
    calls: list[Call] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def between(self, start: float, end: float) -> list[Call]:
        """Calls that overlapped [start, end]."""
        return [c for c in self.calls if c.started <= end and c.ended >= start]


def channel(target: str) -> grpc.aio.Channel:
    """A channel configured as the CLI's: UNAVAILABLE retried by the service config."""
    return grpc.aio.insecure_channel(
        target, options=[("grpc.service_config", service_config()), ("grpc.enable_retries", 1)]
    )


async def _client(number: int, gateway: gateway_pb2_grpc.GatewayServiceAsyncStub, load: Load) -> None:
    rng = random.Random(number)
    weights = [w for _, w in MIX]
    serial = 0
    while not load.stop.is_set():
        name = rng.choices(RPCS, weights)[0]
        query = words(rng, rng.randint(3, 7))
        started = time.monotonic()
        try:
            if name == "Search":
                await gateway.Search(
                    gateway_pb2.SearchRequest(namespace=LOAD_NAMESPACE, query=query), timeout=DEADLINE_S
                )
            elif name == "Ask":
                await gateway.Ask(
                    gateway_pb2.AskRequest(namespace=LOAD_NAMESPACE, question=query + "?", skip_cache=True),
                    timeout=DEADLINE_S,
                )
            else:
                serial += 1
                document = gateway_pb2.Document(
                    id=f"load-{number}-{serial}", title="load", text=text(rng, rng.randint(15, 60))
                )
                await gateway.IngestDocuments(
                    gateway_pb2.IngestDocumentsRequest(namespace=LOAD_NAMESPACE, documents=[document]),
                    timeout=DEADLINE_S,
                )
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            load.calls.append(
                Call(name, started, time.monotonic(), rpc.status_name(error), rpc.detail(error))
            )
            await asyncio.sleep(retry_hint_s(error))  # a failing stack must not turn into a busy loop
        else:
            load.calls.append(Call(name, started, time.monotonic(), "OK"))


def retry_hint_s(error: BaseException) -> float:
    """The server's hint (grpc-retry-pushback-ms) where it gives one, as a well-behaved client reads it."""
    if isinstance(error, grpc.aio.AioRpcError):
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-retry-pushback-ms":
                return int(value) / 1000
    return DEFAULT_PAUSE_S


async def run_load(target: str, load: Load, clients: int = CLIENTS) -> None:
    """`clients` clients over CHANNELS channels until `load.stop` is set."""
    channels = [channel(target) for _ in range(CHANNELS)]
    try:
        stubs = [gateway_pb2_grpc.GatewayServiceStub(c) for c in channels]
        await asyncio.gather(*(_client(i, stubs[i % CHANNELS], load) for i in range(clients)))
    finally:
        for opened in channels:
            await opened.close()


async def load_for(target: str, seconds: float, clients: int = CLIENTS) -> Load:
    """The load for `seconds`, with the calls it made."""
    load = Load()
    task = asyncio.create_task(run_load(target, load, clients))
    await asyncio.sleep(seconds)
    load.stop.set()
    await task
    return load


def counts(calls: Sequence[Call]) -> dict[str, Counter[str]]:
    """Statuses per RPC."""
    by_rpc: dict[str, Counter[str]] = defaultdict(Counter)
    for call in calls:
        by_rpc[call.rpc][call.status] += 1
    return by_rpc


def percentiles(calls: Sequence[Call]) -> tuple[float, float]:
    """p50 and p99 in ms of the successful calls; NaN without any."""
    ms = [(c.ended - c.started) * 1000 for c in calls if c.status == "OK"]
    if not ms:
        return float("nan"), float("nan")
    return percentile(ms, 50), percentile(ms, 99)
