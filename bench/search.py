"""The query path against its floor: what the gateway and its three gRPC hops add to a search.

    python bench/search.py [--quick] [--data-dir DIR] [--documents N] [--data ../shared/datasets/scifact]

1. The whole stack (rag_cli.stack.Stack, embedded PostgreSQL) with the embedding
   and answer caches off, and SciFact's corpus ingested through the gateway
   into one namespace. With --data-dir the stack keeps its data there, and a
   later run re-ingests nothing (the documents are unchanged): the first run
   embeds the corpus (about ten minutes), later ones start in one.
2. In this process, the same model (ONNX, as the embedder loads it) and the
   same database: the floor, the fastest search this process can make with the
   retriever's SQL (search_bench/floor.py), and the retriever's own
   ChunkStore.search_at ("store").
3. For dense and hybrid, at 1, 8 and 32 closed-loop clients: the floor, the
   store, Search through the gateway, and the retriever called directly with
   the query's vector; with dense also the embedder called directly and the
   floor's embedding alone ("embed"). The paths take turns round by round.
   The first queries' hits are compared across the paths first.
4. Ask with the extractive generator beside hybrid Search of the same
   question, one client, and the generator called directly with those sources.

The report gives searches/s, p50 and p95 per path, each as a ratio to the
floor, the cores each process used, the median stage timings the responses
report, and the targets (1 client: gateway p50 <= 1.5x the floor's; 8 and 32
clients: gateway searches/s >= 0.7x the floor's), PASS or MISS. About eight
minutes on two cores once ingested (three with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
from pathlib import Path

import grpc
import psutil

from benchkit import rpc
from benchkit.cli import DEFAULT_SCIFACT, parser
from benchkit.corpus import Corpus, load_corpus, stack_with_corpus
from benchkit.cpu import BENCH
from benchkit.machine import describe, load_average
from benchkit.output import log
from rag.embedder.v1 import embedder_pb2_grpc
from rag.gateway.v1 import gateway_pb2_grpc
from rag.generator.v1 import generator_pb2_grpc
from rag.retriever.v1 import retriever_pb2_grpc
from rag_cli.stack import Stack
from search_bench import ask, paths
from search_bench.floor import Floor, QueryEmbedder, StoreSearch
from search_bench.loop import Level, QueryCycle, alternate
from search_bench.report import Result, report
from search_bench.settings import CLIENT_LEVELS, FULL, NAMESPACE, QUICK, STACK_ENV, Settings
from services.common.registry import EMBEDDER, GENERATOR, RETRIEVER
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel
from services.retriever.hybrid import SearchMode

# Clients share this many channels (each its own TCP connection), as a backend's pool would.
MAX_CHANNELS = 4
AGREEMENT_QUERIES = 30


async def measure(stack: Stack, namespace: str, corpus: Corpus, model: EmbeddingModel, s: Settings) -> Result:
    embedder = QueryEmbedder(model)
    embedder.start()
    floor = await Floor.open(stack.database_url_in_use, embedder)
    store = await StoreSearch.open(stack.database_url_in_use, embedder)
    signer = stack.signer()
    opened: list[grpc.aio.Channel] = []

    def channels(name: str, audience: str = "") -> list[grpc.aio.Channel]:
        made = [
            rpc.channel(stack.target(name), signer if audience else None, audience)
            for _ in range(MAX_CHANNELS)
        ]
        opened.extend(made)
        return made

    try:
        queries = corpus.queries
        log(f"embedding the {len(queries)} queries in process, for the retriever's direct calls")
        vectors = [await embedder.embed(q) for q in queries]
        gateways: list[gateway_pb2_grpc.GatewayServiceAsyncStub] = [
            gateway_pb2_grpc.GatewayServiceStub(c) for c in channels("gateway")
        ]
        embedders: list[embedder_pb2_grpc.EmbedderServiceAsyncStub] = [
            embedder_pb2_grpc.EmbedderServiceStub(c) for c in channels("embedder", EMBEDDER.name)
        ]
        retrievers: list[retriever_pb2_grpc.RetrieverServiceAsyncStub] = [
            retriever_pb2_grpc.RetrieverServiceStub(c) for c in channels("retriever", RETRIEVER.name)
        ]
        generator: generator_pb2_grpc.GeneratorServiceAsyncStub = generator_pb2_grpc.GeneratorServiceStub(
            channels("generator", GENERATOR.name)[0]
        )
        processes = {"bench": BENCH} | {
            name: psutil.Process(stack.process(name).pid) for name in ("gateway", "embedder", "retriever")
        }
        levels: dict[str, dict[int, dict[str, Level]]] = {}
        agreement: dict[str, str] = {}
        cycle = QueryCycle(len(queries))
        for mode in (SearchMode.DENSE, SearchMode.HYBRID):
            calls = {
                "floor": paths.in_process(floor, namespace, queries, mode),
                "store": paths.in_process(store, namespace, queries, mode),
                "gateway": paths.gateway_search(gateways, namespace, queries, mode),
                "retriever": paths.retriever_search(retrievers, namespace, queries, vectors, mode),
            }
            agreement[mode.value] = await agree(calls)
            if mode is SearchMode.DENSE:
                calls["embedder"] = paths.embedder_embed(embedders, queries)
                calls["embed"] = paths.embed_in_process(embedder, queries)
            levels[mode.value] = {}
            for clients in CLIENT_LEVELS:
                log(f"{mode.value}, {clients} clients")
                levels[mode.value][clients] = await alternate(calls, clients, cycle, processes, s)
        log("Ask beside Search")
        asked = await ask.measure(gateways[0], generator, namespace, queries, s.asks)
    finally:
        await asyncio.gather(*(c.close() for c in opened))
        await store.close()
        await floor.close()
        await embedder.close()
    return Result(describe(), "", len(corpus.documents), 0, len(queries), agreement, levels, asked, 0.0)


async def agree(calls: dict[str, paths.Call]) -> str:
    """How many of the first queries every path answered with the same hits, in the same order."""
    same = 0
    for index in range(AGREEMENT_QUERIES):
        answers = {name: (await call(index)).hits for name, call in calls.items()}
        same += len({tuple(hits) for hits in answers.values()}) == 1
    return f"{same} of {AGREEMENT_QUERIES} queries alike on every path"


def run(args: argparse.Namespace) -> Result:
    started = time.perf_counter()
    s = QUICK if args.quick else FULL
    if args.seconds:
        s = dataclasses.replace(s, round_s=args.seconds)
    load_at_start = load_average()
    corpus = load_corpus(args.data, args.documents)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with stack_with_corpus(args.data_dir, "rag-bench-search-", STACK_ENV, args.namespace, corpus) as stack:
        chunks = asyncio.run(ask.chunk_count(stack.database_url_in_use, args.namespace))
        log("loading the model in process")
        model = EmbeddingModel.load(EmbedderSettings())
        result = asyncio.run(measure(stack, args.namespace, corpus, model, s))
    return dataclasses.replace(
        result, load_at_start=load_at_start, chunks=chunks, seconds=time.perf_counter() - started
    )


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--quick", action="store_true", help="a short smoke run")
    arguments.add_argument("--seconds", type=float, help="measured seconds per round")
    arguments.add_argument(
        "--data-dir", type=Path, help="keep the stack's data here, to reuse the ingested corpus"
    )
    arguments.add_argument(
        "--namespace", default=NAMESPACE, help="where the corpus is ingested (default %(default)s)"
    )
    arguments.add_argument("--documents", type=int, help="ingest only the first N documents")
    arguments.add_argument("--data", type=Path, default=DEFAULT_SCIFACT, help="SciFact in BEIR format")
    report(run(arguments.parse_args()))


if __name__ == "__main__":
    main()
