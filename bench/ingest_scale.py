"""Bulk ingestion over embedder replicas: chunks/s through the gateway with 1 and with 2 replicas.

    python bench/ingest_scale.py [--documents 200] [--rounds 3] [--concurrency 4] [--per-call 10]
                                 [--data ../shared/datasets/scifact]

The same documents are ingested through the gateway, as `rag ingest
--concurrency N` sends them (rag_cli.bulk: up to N IngestDocuments calls in
flight), (a) by a gateway in front of one embedder replica and (b) by a gateway
in front of two, set up alike but for their embedder target (an ipv4: list of
both replicas, balanced round_robin). Each replica is pinned to a core of its
own with `taskset` and runs one engine thread (EMBEDDER_INTRA_OP_THREADS=1),
with its embedding cache off, so every round embeds every chunk; the retriever
and the embedded PostgreSQL are the same for both and not pinned. Each round
ingests into a fresh namespace, so nothing is skipped as unchanged, and the
configurations take turns, round by round, so that load from other jobs on the
machine falls on both alike.

chunks/s is the chunks stored over the rounds' time; "per core" divides it by
the CPU the replicas used. Equal per-core figures mean that a shortfall in
chunks/s is CPU the replicas did not use: idle for want of a stream when
"others" is low, squeezed by another job when it is high. The table also shows
each configuration's rounds, the EmbedStream calls each replica took (from its
Prometheus metrics: an ingest call embeds through one stream, on one replica),
and the cores every process used; "others" is what the rest of the machine
took. The target (2 replicas at least 1.7x the chunks/s of 1) prints PASS or
MISS; the script exits 0 either way. Needs two cores; about five minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from benchkit.cli import DEFAULT_SCIFACT, parser
from benchkit.machine import describe, load_average
from benchkit.output import log
from ingest_scale_bench.corpus import load_corpus
from ingest_scale_bench.deployment import CORES, deployment
from ingest_scale_bench.measure import measure
from ingest_scale_bench.report import Result, report
from rag_cli.bulk import MAX_CONCURRENCY


def run(args: argparse.Namespace) -> Result:
    started = time.perf_counter()
    load_at_start = load_average()
    corpus = load_corpus(args.data, args.documents)
    log("starting PostgreSQL, the services, a second embedder and a second gateway")
    with deployment() as deployed:
        log("measuring")
        rounds = asyncio.run(measure(deployed, corpus, args.rounds, args.concurrency, args.per_call))
        cores = dict(deployed.cores)
    return Result(
        describe(),
        load_at_start,
        load_average(),
        corpus.source,
        len(corpus.documents),
        args.concurrency,
        args.per_call,
        cores,
        rounds,
        time.perf_counter() - started,
    )


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--documents", type=int, default=200, help="documents ingested per round")
    arguments.add_argument("--rounds", type=int, default=3, help="rounds of each configuration")
    arguments.add_argument(
        "--concurrency",
        type=int,
        choices=range(1, MAX_CONCURRENCY + 1),
        default=4,
        metavar="N",
        help="IngestDocuments calls in flight (default %(default)s)",
    )
    arguments.add_argument("--per-call", type=int, default=10, help="documents per IngestDocuments call")
    arguments.add_argument("--data", type=Path, default=DEFAULT_SCIFACT, help="SciFact in BEIR format")
    args = arguments.parse_args()
    if (os.cpu_count() or 1) <= max(CORES):
        raise SystemExit(f"needs a core for each replica: {len(CORES)} cores")
    report(run(args))


if __name__ == "__main__":
    main()
