"""The embedder benchmark's report: the ceiling, the service, the ingestion and the targets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import onnxruntime
import torch

from benchkit.cpu import Cores, Tally
from benchkit.defaults import CHUNK_OVERLAP, CHUNK_TOKENS
from benchkit.machine import load_average
from benchkit.output import verdict
from embedder_bench.ceiling import BATCH_SIZES, Ceiling, Reference
from embedder_bench.ingest import DOCUMENTS_PER_CALL, INGEST_CALLERS, Ingested
from embedder_bench.service import STREAM_BATCH, Service
from embedder_bench.texts import Texts
from rag_cli.metrics import percentile

TARGET_LOAD = 0.9  # 32 clients, texts/s over the short-text ceiling: at least
TARGET_LATENCY = 1.3  # single query p50 over in-process: at most
TARGET_INGEST = 0.8  # ingestion chunks/s over the chunk ceiling: at least


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


def _p50_p99(values: Sequence[float]) -> str:
    return f"{percentile(values, 50):>8.2f}{percentile(values, 99):>8.2f}"


def report(r: Result) -> None:
    print(
        f"Embedder throughput and latency against the in-process ceiling ({time.strftime('%Y-%m-%d')})\n"
        f"machine: {r.machine}, load average {r.load_at_start} at the start, {load_average()} at the end;"
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
        "one short text in process (ONNX, batch 1): "
        f"p50 {percentile(single, 50):.2f} ms, p99 {percentile(single, 99):.2f} ms"
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
    local_p50 = percentile(single.in_process_ms, 50)
    print(f"\n{'single query, one at a time':<33}{'p50 ms':>8}{'p99 ms':>8}{'p50 / in-process':>18}")
    for label, latencies in (
        ("in process (alternating)", single.in_process_ms),
        ("gRPC Embed", single.grpc_ms),
    ):
        print(f"{label:<33}{_p50_p99(latencies)}{percentile(latencies, 50) / local_p50:>18.2f}")
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


def _target_row(label: str, value: str, bound: str, passed: bool) -> str:
    return f"{label:<44}{value:>6}  {bound}   {verdict(passed)}"


def report_targets(r: Result) -> None:
    service = r.service
    print("\ntargets")
    for load in service.loads:
        if load.clients == 32:
            ratio = load.texts.rate / load.ceiling.rate
            label = f"32 clients over {load.channels} / short ceiling"
            print(_target_row(label, f"{ratio:.3f}", f">= {TARGET_LOAD}", ratio >= TARGET_LOAD))
    latency = percentile(service.single.grpc_ms, 50) / percentile(service.single.in_process_ms, 50)
    label = "single query p50 / in-process p50"
    print(_target_row(label, f"{latency:.3f}", f"<= {TARGET_LATENCY}", latency <= TARGET_LATENCY))
    label = "ingestion chunks/s / chunk ceiling"
    if isinstance(r.ingested, str):
        print(_target_row(label, "failed", f">= {TARGET_INGEST}", False))
    else:
        ratio = r.ingested.chunks.rate / r.ingested.ceiling.rate
        print(_target_row(label, f"{ratio:.3f}", f">= {TARGET_INGEST}", ratio >= TARGET_INGEST))
