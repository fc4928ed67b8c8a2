"""The query-path benchmark's report: each path beside the floor, the stages, Ask, and the targets."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from benchkit.cpu import Cores
from benchkit.machine import load_average
from benchkit.output import verdict
from rag_cli.metrics import percentile
from search_bench.loop import Level
from search_bench.paths import Sample

TARGET_LATENCY = 1.5  # 1 client: gateway p50 over the floor's, at most
TARGET_THROUGHPUT = 0.7  # 8 and 32 clients: gateway searches/s over the floor's, at least
FLOOR, GATEWAY = "floor", "gateway"
PROCESSES = ("bench", "gateway", "embedder", "retriever")


@dataclass(frozen=True)
class AskRun:
    ask: list[Sample]
    search: list[Sample]  # hybrid, one at a time, alternating with the asks
    generate: list[Sample]  # the generator called directly with the same sources


@dataclass(frozen=True)
class Result:
    machine: str
    load_at_start: str
    documents: int
    chunks: int
    queries: int
    agreement: dict[str, str]  # mode -> what the paths' hits agree on
    levels: dict[str, dict[int, dict[str, Level]]]  # mode -> clients -> path -> level
    ask: AskRun
    seconds: float


def _p(samples: Sequence[Sample], q: float) -> float:
    return percentile([s.ms for s in samples], q)


def _cores(cores: Cores) -> str:
    return "".join(f"{cores.by_process.get(name, 0.0):>6.2f}" for name in PROCESSES) + f"{cores.others:>7.2f}"


def _stage_medians(samples: Sequence[Sample]) -> str:
    stages: dict[str, list[float]] = {}
    for sample in samples:
        for stage, ms in sample.stages.items():
            stages.setdefault(stage, []).append(ms)
    return ", ".join(f"{stage} {statistics.median(values):.1f}" for stage, values in stages.items())


def report(r: Result) -> None:
    print(
        f"The query path against its floor ({time.strftime('%Y-%m-%d')})\n"
        f"machine: {r.machine}, load average {r.load_at_start} at the start, {load_average()} at the end;"
        " shared with other jobs\n"
        f"data: SciFact, {r.documents:,} documents -> {r.chunks:,} chunks; {r.queries:,} claims as queries"
        " in turn; top_k 10; embedding and answer caches off\n"
        "paths: floor = the same model, database and SQL in this process, no gRPC (search_bench/floor.py);"
        " store = the floor's\n  embedding + the retriever's ChunkStore.search_at in this process; gateway ="
        " Search through the gateway;\n  retriever / embedder = each service called directly over gRPC."
        " The clients run in this process (bench), on the same cores."
    )
    for mode, by_clients in r.levels.items():
        print(f"\n{mode}: hits agree: {r.agreement[mode]}")
        print(
            f"{'clients':>7} {'path':<12}{'search/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'x floor':>8}"
            f"   cores:{''.join(f'{n[:6]:>6}' for n in PROCESSES)}{'others':>7}"
        )
        for clients, paths in by_clients.items():
            floor = paths[FLOOR]
            for name, level in paths.items():
                ratio = (
                    level.tally.rate / floor.tally.rate
                    if clients > 1
                    else _p(level.samples, 50) / _p(floor.samples, 50)
                )
                print(
                    f"{clients:>7} {name:<12}{level.tally.rate:>9.1f}{_p(level.samples, 50):>8.2f}"
                    f"{_p(level.samples, 95):>8.2f}{ratio:>8.2f}   {' ' * 6}{_cores(level.tally.cores)}"
                )
        print(
            "(x floor: p50 over the floor's at 1 client, searches/s over the floor's above;"
            " others: PostgreSQL and the rest of the machine)"
        )
        print("stage medians, ms, 1 client:")
        for name in ("gateway", "retriever", "embedder"):
            if name in by_clients[1]:
                print(f"  {name}: {_stage_medians(by_clients[1][name].samples)}")
        report_hops(by_clients[1])
    report_ask(r.ask)
    report_targets(r)
    print(f"\n{r.seconds / 60:.1f} minutes in all")


def _stage(samples: Sequence[Sample], stage: str) -> float:
    return statistics.median(sample.stages[stage] for sample in samples if stage in sample.stages)


def report_hops(one: dict[str, Level]) -> None:
    """Where a 1-client search's time goes: each hop's wait against the work at its other end (p50s)."""
    gateway, retriever = one[GATEWAY].samples, one["retriever"].samples
    total, embed, retrieve = _p(gateway, 50), _stage(gateway, "embed"), _stage(gateway, "retrieve")
    searched = _stage(retriever, "search")
    print(
        f"where the time goes, 1 client, p50 ms: through the gateway {total:.2f} against the floor's"
        f" {_p(one[FLOOR].samples, 50):.2f}\n"
        f"  the gateway's own work and the client's hop {total - embed - retrieve:.2f}\n"
        f"  retrieve {retrieve:.2f}: the retriever's search stage {searched:.2f}, its hop"
        f" {retrieve - searched:.2f} (called directly: {_p(retriever, 50) - searched:.2f})"
    )
    if "embedder" in one:
        embedder = one["embedder"].samples
        inside = _stage(embedder, "embed")
        print(
            f"  embed {embed:.2f}: the embedder's embed stage {inside:.2f} (in this process:"
            f" {_p(one['embed'].samples, 50):.2f}), its hop {embed - inside:.2f} (called directly:"
            f" {_p(embedder, 50) - inside:.2f})"
        )


def report_ask(ask: AskRun) -> None:
    print(
        "\nAsk with the extractive generator, one client, alternating with hybrid Search of the same"
        " question:"
    )
    ask_p50, search_p50, generate_p50 = _p(ask.ask, 50), _p(ask.search, 50), _p(ask.generate, 50)
    print(
        f"  Ask p50 {ask_p50:.2f} ms, Search p50 {search_p50:.2f} ms:"
        f" Ask / Search {ask_p50 / search_p50:.2f};"
        f" Ask's stages: {_stage_medians(ask.ask)}\n"
        f"  the generator called directly with the same sources: p50 {generate_p50:.2f} ms"
        f" ({_stage_medians(ask.generate)})"
    )


def report_targets(r: Result) -> None:
    print("\ntargets:")
    for mode, by_clients in r.levels.items():
        one = by_clients[1]
        ratio = _p(one[GATEWAY].samples, 50) / _p(one[FLOOR].samples, 50)
        print(
            f"  {mode}, 1 client: gateway p50 / floor p50 {ratio:.2f} (<= {TARGET_LATENCY}) "
            f"{verdict(ratio <= TARGET_LATENCY)}"
        )
        for clients in (c for c in by_clients if c > 1):
            paths = by_clients[clients]
            ratio = paths[GATEWAY].tally.rate / paths[FLOOR].tally.rate
            print(
                f"  {mode}, {clients} clients: gateway searches/s / floor's {ratio:.2f}"
                f" (>= {TARGET_THROUGHPUT}) "
                f"{verdict(ratio >= TARGET_THROUGHPUT)}"
            )
