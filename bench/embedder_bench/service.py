"""The embedder service alone: closed-loop clients, single queries and EmbedStream, beside the ceiling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from benchkit import rpc
from benchkit.cpu import BENCH, CpuMeter, Tally
from benchkit.output import log
from benchkit.stack import running_service
from embedder_bench.ceiling import Reference, onnx_encode, timed_ms
from embedder_bench.settings import SERVICE_ENV, Settings
from embedder_bench.texts import ShortTexts, Texts
from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from rag_cli.metrics import percentile
from services.common.internal_auth import TokenSigner
from services.common.registry import EMBEDDER
from services.embedder.model import EmbeddingModel

LOAD_LEVELS = ((1, 1), (8, 8), (32, 1), (32, 4), (32, 32))  # (clients, channels)
STREAM_BATCH = 32


@dataclass(frozen=True)
class Load:
    clients: int
    channels: int
    texts: Tally
    ceiling: Tally  # the slices between its rounds
    p50_ms: float
    p99_ms: float
    connections: int  # TCP connections to the service, seen during the run


@dataclass(frozen=True)
class SingleQuery:
    grpc_ms: list[float]
    in_process_ms: list[float]  # interleaved with the gRPC calls


@dataclass(frozen=True)
class Service:
    loads: list[Load]
    single: SingleQuery
    stream: Tally
    stream_ceiling: Tally
    cache_hits: int
    short_sent: int


class CacheHits:
    """Answers the service took from its cache: must stay 0."""

    def __init__(self) -> None:
        self.count = 0


@dataclass(frozen=True)
class Endpoint:
    """Where the embedder under test listens, and the key its calls are signed with."""

    target: str
    signer: TokenSigner

    def channel(self) -> grpc.aio.Channel:
        return rpc.channel(self.target, self.signer, EMBEDDER.name)

    @property
    def port(self) -> int:
        return int(self.target.rsplit(":", 1)[1])


@contextlib.contextmanager
def embedder_service(data_dir: Path) -> Iterator[tuple[Endpoint, psutil.Process]]:
    """The embedder alone, started as Stack starts it, with SERVICE_ENV; yields it and its process."""
    with running_service("embedder", data_dir, SERVICE_ENV) as stack:
        endpoint = Endpoint(stack.target("embedder"), stack.signer())
        yield endpoint, psutil.Process(stack.process("embedder").pid)


def _query(text: str) -> embedder_pb2.EmbedRequest:
    return embedder_pb2.EmbedRequest(texts=[text], input_type=embedder_pb2.INPUT_TYPE_QUERY)


def _connections(server: psutil.Process, port: int) -> int:
    return sum(
        1
        for c in server.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
    )


async def check_cache_off(target: Endpoint) -> None:
    async with target.channel() as opened:
        info = await embedder_pb2_grpc.EmbedderServiceStub(opened).Info(embedder_pb2.InfoRequest())
    if info.cache.capacity != 0:
        raise RuntimeError(f"the embedder under test has a cache of {info.cache.capacity}; it must be off")


async def closed_loop(
    target: Endpoint,
    server: psutil.Process,
    texts: ShortTexts,
    clients: int,
    channels: int,
    reference: Reference,
    s: Settings,
    hits: CacheHits,
) -> Load:
    """`clients` callers, each sending one short text per Embed call as soon as the last is answered,
    in rounds between slices of the ceiling."""
    opened = [target.channel() for _ in range(channels)]
    stubs = [embedder_pb2_grpc.EmbedderServiceStub(c) for c in opened]
    tally = Tally()
    latencies: list[float] = []
    connections = 0

    async def one_round() -> None:
        nonlocal connections
        calls: list[tuple[float, float]] = []
        closing = asyncio.Event()

        async def client(index: int) -> None:
            stub = stubs[index % channels]
            while not closing.is_set():
                request = _query(next(texts))
                started = time.perf_counter()
                reply = await stub.Embed(request, timeout=60)
                calls.append((started, time.perf_counter()))
                hits.count += reply.cache_hits

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        await asyncio.sleep(s.round_warmup_s)
        meter = CpuMeter({"server": server, "bench": BENCH})
        window_start = time.perf_counter()
        await asyncio.sleep(s.round_s / 2)
        connections = max(connections, _connections(server, target.port))
        await asyncio.sleep(s.round_s / 2)
        cores = meter.stop()
        window_end = time.perf_counter()
        closing.set()
        await asyncio.gather(*tasks)
        answered = sum(1 for _, end in calls if window_start <= end <= window_end)
        tally.add(answered, window_end - window_start, cores)
        latencies.extend(
            (end - start) * 1000 for start, end in calls if window_start <= start and end <= window_end
        )

    try:
        await asyncio.gather(*(c.channel_ready() for c in opened))
        ceiling = await reference.alternate([one_round] * s.rounds)
    finally:
        await asyncio.gather(*(c.close() for c in opened))
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return Load(clients, channels, tally, ceiling, p50, p99, connections)


async def single_queries(
    target: Endpoint, model: EmbeddingModel, texts: ShortTexts, count: int, hits: CacheHits
) -> SingleQuery:
    """One query at a time through gRPC, each beside an in-process encode of another text, in turn."""
    encode = onnx_encode(model)
    grpc_ms: list[float] = []
    in_process_ms: list[float] = []
    async with target.channel() as opened:
        stub = embedder_pb2_grpc.EmbedderServiceStub(opened)

        async def over_grpc() -> float:
            request = _query(next(texts))
            started = time.perf_counter()
            reply = await stub.Embed(request, timeout=60)
            hits.count += reply.cache_hits
            return (time.perf_counter() - started) * 1000

        for index in range(count + 10):  # the first 10 untimed
            if index % 2:
                local = timed_ms(encode, next(texts))
                remote = await over_grpc()
            else:
                remote = await over_grpc()
                local = timed_ms(encode, next(texts))
            if index >= 10:
                in_process_ms.append(local)
                grpc_ms.append(remote)
            await asyncio.sleep(0.002)  # let either engine's threads go idle
    return SingleQuery(grpc_ms, in_process_ms)


async def stream_chunks(
    target: Endpoint,
    server: psutil.Process,
    chunks: list[str],
    reference: Reference,
    s: Settings,
    hits: CacheHits,
) -> tuple[Tally, Tally]:
    """The chunks through EmbedStream, STREAM_BATCH texts a message as the gateway sends them: one call
    a round, each round a share of the chunks; the chunks' tally and the ceiling slices'."""
    tally = Tally()
    per_round = -(-len(chunks) // s.rounds)
    async with target.channel() as opened:
        await opened.channel_ready()
        stub = embedder_pb2_grpc.EmbedderServiceStub(opened)

        async def one_round(texts: list[str]) -> None:
            requests = [
                embedder_pb2.EmbedStreamRequest(
                    sequence=number,
                    batch=embedder_pb2.EmbedRequest(
                        texts=texts[start : start + STREAM_BATCH],
                        input_type=embedder_pb2.INPUT_TYPE_DOCUMENT,
                        truncate=False,
                    ),
                )
                for number, start in enumerate(range(0, len(texts), STREAM_BATCH), start=1)
            ]
            meter = CpuMeter({"server": server, "bench": BENCH})
            started = time.perf_counter()
            embedded = 0
            async for response in stub.EmbedStream(iter(requests), timeout=600):
                if response.sequence != embedded // STREAM_BATCH + 1:
                    raise RuntimeError(f"EmbedStream answered message {response.sequence} out of order")
                embedded += len(response.batch.embeddings)
                hits.count += response.batch.cache_hits
            if embedded != len(texts):
                raise RuntimeError(f"EmbedStream returned {embedded} embeddings for {len(texts)} chunks")
            tally.add(embedded, time.perf_counter() - started, meter.stop())

        rounds = [
            lambda part=chunks[start : start + per_round]: one_round(part)
            for start in range(0, len(chunks), per_round)
        ]
        ceiling = await reference.alternate(rounds)
    return tally, ceiling


async def measure_service(
    target: Endpoint,
    server: psutil.Process,
    model: EmbeddingModel,
    texts: Texts,
    chunks: list[str],
    references: tuple[Reference, Reference],
    s: Settings,
) -> Service:
    await check_cache_off(target)
    short_reference, chunk_reference = references
    short = ShortTexts(texts.short)
    hits = CacheHits()
    loads = []
    for clients, channels in LOAD_LEVELS:
        load = await closed_loop(target, server, short, clients, channels, short_reference, s, hits)
        loads.append(load)
        log(
            f"  {clients} clients over {channels} channels: {load.texts.rate:.1f} texts/s, "
            f"p50 {load.p50_ms:.1f} ms (ceiling between the rounds {load.ceiling.rate:.1f}/s)"
        )
    single = await single_queries(target, model, short, s.single_queries, hits)
    log(f"  single query: p50 {percentile(single.grpc_ms, 50):.1f} ms")
    stream, ceiling = await stream_chunks(target, server, chunks, chunk_reference, s, hits)
    log(f"  EmbedStream: {stream.rate:.1f} chunks/s (ceiling between the rounds {ceiling.rate:.1f}/s)")
    return Service(loads, single, stream, ceiling, hits.count, short.sent)
