"""The benchmark's report: each configuration's chunks/s over its rounds, where the CPU went, how the
streams were spread, and the ratio against its target."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from benchkit.output import verdict
from ingest_scale_bench.deployment import ONE, TWO, Setup
from ingest_scale_bench.measure import Round

TARGET_RATIO = 1.7  # 2 replicas' chunks/s over 1 replica's: at least
GROUPS = ("embedder", "embedder-2", "gateway", "retriever", "postgres")


@dataclass(frozen=True)
class Result:
    machine: str
    load_at_start: str
    load_at_end: str
    corpus: str
    documents: int
    concurrency: int
    per_call: int
    cores: dict[str, int]  # replica -> the core it is pinned to
    rounds: list[Round]
    seconds: float


def _rate(rounds: Sequence[Round]) -> float:
    return sum(r.chunks for r in rounds) / sum(r.seconds for r in rounds)


def _cores(rounds: Sequence[Round], group: str) -> str:
    """The group's cores averaged over the rounds, weighted by their time; "-" when not in them."""
    if group not in rounds[0].cores.by_group:
        return "-"
    return f"{sum(r.cores.by_group[group] * r.seconds for r in rounds) / sum(r.seconds for r in rounds):.2f}"


def _per_embedder_core(rounds: Sequence[Round]) -> float:
    """Chunks per CPU second the replicas used: what a configuration makes of the CPU it got."""
    core_s = sum(r.cores.by_group[replica] * r.seconds for r in rounds for replica in r.setup.replicas)
    return sum(r.chunks for r in rounds) / core_s


def _others(rounds: Sequence[Round]) -> float:
    return sum(r.cores.others * r.seconds for r in rounds) / sum(r.seconds for r in rounds)


def _streams(rounds: Sequence[Round]) -> str:
    totals: dict[str, int] = {}
    for r in rounds:
        for replica, streams in r.streams.items():
            totals[replica] = totals.get(replica, 0) + streams
    return " / ".join(str(totals[replica]) for replica in sorted(totals))


def report(result: Result) -> None:
    by_setup: dict[Setup, list[Round]] = {ONE: [], TWO: []}
    for r in result.rounds:
        by_setup[r.setup].append(r)
    chunks = result.rounds[0].chunks
    pins = ", ".join(f"{replica} on core {core}" for replica, core in result.cores.items())
    print(
        f"Bulk ingestion through the gateway, 1 and 2 embedder replicas ({time.strftime('%Y-%m-%d')}): "
        f"{result.documents} documents, {chunks} chunks a round, {len(by_setup[ONE])} rounds each, "
        f"{result.concurrency} IngestDocuments calls of {result.per_call} documents in flight"
    )
    print(
        f"machine: {result.machine}, load average {result.load_at_start} at the start, "
        f"{result.load_at_end} at the end; shared with other jobs"
    )
    print(f"replicas: one engine thread each, embedding cache off, pinned with taskset: {pins}")
    print("same gateway settings, retriever and embedded PostgreSQL for both; one gateway per configuration")
    print(f"corpus: {result.corpus}")
    print()
    replicas = sorted(result.cores)
    header = f"{'configuration':<14}{'chunks/s':>9}{'per core':>9}  {'each round':<24}"
    header += f"{'streams ' + '/'.join(replicas):>22}"
    header += "  cores:" + "".join(f"{g:>11}" for g in (*GROUPS, "others"))
    print(header)
    for setup, rounds in by_setup.items():
        each = " ".join(f"{r.rate:.1f}" for r in rounds)
        cells = "".join(f"{_cores(rounds, g):>11}" for g in GROUPS) + f"{_others(rounds):>11.2f}"
        rates = f"{_rate(rounds):>9.1f}{_per_embedder_core(rounds):>9.1f}"
        print(f"{setup.label:<14}{rates}  {each:<24}{_streams(rounds):>22}  {'':6}{cells}")
    ratio = _rate(by_setup[TWO]) / _rate(by_setup[ONE])
    print()
    passed = verdict(ratio >= TARGET_RATIO)
    print(f"{'2 replicas / 1 replica, chunks/s':<40}{ratio:>6.2f}  >= {TARGET_RATIO}  {passed}")
    print(f"\n{result.seconds / 60:.1f} minutes in all")
