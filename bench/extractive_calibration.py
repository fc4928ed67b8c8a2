"""Where the extractive generator should say "cannot answer": its min_overlap against what it costs.

    python bench/extractive_calibration.py [--data-dir DIR] [--namespace scifact] [--split train]
                                           [--data ../shared/datasets/scifact]

SciFact's judged claims of --split (train: never the test qrels) are asked
twice: in the namespace holding the corpus, where each has its relevant
abstracts (in-corpus: it should be answered), and in a namespace holding only
samples/ (out-of-corpus: it should be refused). Each claim's sources are what
Ask gives the generator: Search through the gateway at Ask's defaults (top_k,
hybrid); the answers are then the generator's own (services.generator: its
context assembly and ExtractiveBackend, default settings) at each min_overlap,
so the whole curve costs one search per claim and namespace.

Per min_overlap: the answered rate in-corpus, the citation precision of those
answers (cited sources from a relevant abstract, averaged over answered
claims, as `rag eval-answers` computes it) and the refusal rate out-of-corpus.
The targets (answered >= 0.70 with citation precision >= 0.60, refusal >= 0.95)
print PASS or MISS, and the highest min_overlap meeting all three is named.
Confirm it through the services with `rag eval-answers` on `rag golden
build-beir`'s set and GENERATOR_EXTRACTIVE_MIN_OVERLAP (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from benchkit.cli import DEFAULT_SCIFACT, parser
from benchkit.corpus import Corpus, ingest, load_corpus, stack_with_corpus
from benchkit.machine import describe, load_average
from benchkit.output import log, verdict
from benchkit.rpc import channel
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from rag_cli import beir
from rag_cli.answers.metrics import citation_precision
from services.generator.backends.extractive import ExtractiveBackend
from services.generator.config import GeneratorSettings
from services.generator.server import build_assembler
from services.generator.sources import GenerationOptions, Source

OUT_OF_CORPUS = "calibration-samples"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
MIN_OVERLAPS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
TARGET_ANSWERED, TARGET_PRECISION, TARGET_REFUSED = 0.70, 0.60, 0.95
CONCURRENCY = 8
# Every Ask answered afresh: the curve is of the generator, not of the cache.
STACK_ENV = {"GATEWAY_ANSWER_CACHE_SIZE": "0"}


@dataclass(frozen=True)
class Claim:
    text: str
    relevant: frozenset[str]


@dataclass(frozen=True)
class Point:
    min_overlap: float
    answered: float  # in-corpus claims answered
    precision: float  # citation precision of those answers
    refused: float  # out-of-corpus claims refused

    @property
    def passes(self) -> bool:
        return (
            self.answered >= TARGET_ANSWERED
            and self.precision >= TARGET_PRECISION
            and self.refused >= TARGET_REFUSED
        )


def read_claims(data: Path, split: str) -> list[Claim]:
    queries = beir.read_queries(data / "queries.jsonl")
    judged = beir.read_qrels(data / "qrels" / f"{split}.tsv")
    return [
        Claim(queries[query_id], frozenset(d for d, score in scores.items() if score > 0))
        for query_id, scores in judged.items()
        if any(score > 0 for score in scores.values())
    ]


async def sources_of(target: str, namespace: str, claims: list[Claim]) -> list[list[Source]]:
    """Each claim's sources as Ask hands them to the generator: hits numbered from 1."""
    async with channel(target) as opened:
        gateway = gateway_pb2_grpc.GatewayServiceStub(opened)
        slots = asyncio.Semaphore(CONCURRENCY)

        async def search(claim: Claim) -> list[Source]:
            async with slots:
                response = await gateway.Search(
                    gateway_pb2.SearchRequest(namespace=namespace, query=claim.text), timeout=60
                )
            return [_source(number, hit) for number, hit in enumerate(response.hits, start=1)]

        return await asyncio.gather(*(search(claim) for claim in claims))


def _source(number: int, hit: retriever_pb2.SearchHit) -> Source:
    return Source(number, hit.document_id, hit.chunk_index, hit.title, hit.text, hit.score)


async def answers_at(
    min_overlap: float, claims: list[Claim], sources: list[list[Source]]
) -> list[tuple[bool, list[str]]]:
    """(answered, cited document ids) per claim, from the generator's assembly and backend."""
    settings = GeneratorSettings()
    assembler = build_assembler(settings)
    backend = ExtractiveBackend(min_overlap=min_overlap)
    answered = []
    for claim, offered in zip(claims, sources, strict=True):
        assembled = assembler.assemble(claim.text, offered, [], settings.default_max_tokens)
        answer = await backend.answer(claim.text, assembled.sources, assembled.history, GenerationOptions())
        answered.append((answer.answered, [c.document_id for c in answer.citations]))
    return answered


async def curve(claims: list[Claim], inside: list[list[Source]], outside: list[list[Source]]) -> list[Point]:
    points = []
    for min_overlap in MIN_OVERLAPS:
        in_corpus = await answers_at(min_overlap, claims, inside)
        out_of_corpus = await answers_at(min_overlap, claims, outside)
        precisions = [
            p
            for (answered, cited), claim in zip(in_corpus, claims, strict=True)
            if answered and (p := citation_precision(cited, claim.relevant)) is not None
        ]
        points.append(
            Point(
                min_overlap,
                sum(answered for answered, _ in in_corpus) / len(claims),
                statistics.fmean(precisions) if precisions else 0.0,
                sum(not answered for answered, _ in out_of_corpus) / len(claims),
            )
        )
    return points


def ingest_samples(gateway_target: str) -> None:
    documents = [
        beir.CorpusDocument(path.name, "", path.read_text())
        for path in sorted(SAMPLES.iterdir())
        if path.is_file()
    ]
    ingest(gateway_target, OUT_OF_CORPUS, Corpus(documents, []))


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    load_at_start = load_average()
    claims = read_claims(args.data, args.split)
    corpus = load_corpus(args.data, None)
    with stack_with_corpus(
        args.data_dir, "rag-bench-calibration-", STACK_ENV, args.namespace, corpus
    ) as stack:
        ingest_samples(stack.gateway_target)
        log(f"searching {len(claims)} claims in {args.namespace} and in {OUT_OF_CORPUS}")
        inside = asyncio.run(sources_of(stack.gateway_target, args.namespace, claims))
        outside = asyncio.run(sources_of(stack.gateway_target, OUT_OF_CORPUS, claims))
    points = asyncio.run(curve(claims, inside, outside))
    print(
        f"The extractive generator's min_overlap on SciFact {args.split} ({time.strftime('%Y-%m-%d')})\n"
        f"machine: {describe()}, load average {load_at_start} at the start, {load_average()} at the end\n"
        f"{len(claims)} judged claims, each asked in {args.namespace} (its abstracts in the corpus) and in"
        f" {OUT_OF_CORPUS} (samples/ only); sources: Search at Ask's defaults\n"
    )
    print(f"{'min_overlap':>11}{'answered':>10}{'cit. prec.':>11}{'refused':>9}   targets")
    for point in points:
        print(
            f"{point.min_overlap:>11.2f}{point.answered:>10.3f}{point.precision:>11.3f}{point.refused:>9.3f}"
            f"   {verdict(point.passes)}"
        )
    passing = [p.min_overlap for p in points if p.passes]
    print(
        f"\ntargets: answered >= {TARGET_ANSWERED}, citation precision >= {TARGET_PRECISION},"
        f" refused >= {TARGET_REFUSED}; "
        + (
            f"the highest min_overlap meeting all three: {max(passing):.2f}"
            if passing
            else "none meets all three"
        )
    )
    print(f"\n{(time.perf_counter() - started) / 60:.1f} minutes in all")


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--data-dir", type=Path, help="the stack's data (reuse one holding the corpus)")
    arguments.add_argument("--namespace", default="scifact", help="where the corpus is (default %(default)s)")
    arguments.add_argument("--split", default="train", help="the judged claims (default %(default)s)")
    arguments.add_argument("--data", type=Path, default=DEFAULT_SCIFACT, help="SciFact in BEIR format")
    run(arguments.parse_args())


if __name__ == "__main__":
    main()
