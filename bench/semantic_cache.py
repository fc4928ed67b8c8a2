"""The semantic answer cache measured for wrong hits before it is trusted, on SciFact's train claims.

    python bench/semantic_cache.py [--data-dir DIR] [--namespace scifact] [--data ../shared/datasets/scifact]
                                   [--documents N] [--clients 2]

1. The whole stack (rag_cli.stack.Stack, embedded PostgreSQL) and SciFact's
   corpus ingested through the gateway (benchkit/corpus.py: with
   --data-dir a later run re-ingests nothing; the first embeds the corpus,
   about ten minutes; --documents N ingests only the first N, for a smoke run).
2. Each train claim (never a test claim) asked once through the gateway's Ask,
   the answer cache skipped, the extractive generator answering: its own
   answer's outcome and cited documents.
3. The stack stopped, the claims embedded in this process by the model the
   embedder serves (ONNX), as queries.
4. Offline, for each threshold (0.80 .. 0.99) with and without the guard
   (gateway/semantic_cache.py): the claims asked in order into one cache
   (semantic_cache_bench/replay.py), each hit judged against the asking
   claim's own answer; the guarded replays made again by the gateway's own
   AnswerCache, which must make the same hits. Besides: every close pair of
   claims, and the opposite pairs (the same claim but for "not", more/less,
   a number) with the thresholds that would serve one's answer for the other.

Prints markdown tables and a verdict: the lowest threshold whose guarded hits
were all right, or none (then the setting stays off by default). About three
minutes on two cores once the corpus is ingested.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchkit.cli import DEFAULT_SCIFACT, parser
from benchkit.corpus import load_corpus, stack_with_corpus
from benchkit.machine import describe, load_average
from benchkit.output import log
from rag_cli.answers.embedding import TextEmbedder
from semantic_cache_bench.claims import train_claims
from semantic_cache_bench.fresh import ask_each
from semantic_cache_bench.opposites import opposite_pairs
from semantic_cache_bench.replay import (
    THRESHOLDS,
    by_the_gateway_cache,
    pairs_at,
    replay,
    same_hits,
    tally,
)
from semantic_cache_bench.report import Result, report

NAMESPACE = "scifact"
# Ask's own work only: the embedding cache off, so the run does not depend on earlier ones.
STACK_ENV = {"EMBEDDER_CACHE_SIZE": "0"}


def run(args: argparse.Namespace) -> Result:
    started = time.perf_counter()
    load_at_start = load_average()
    corpus = load_corpus(args.data, args.documents)
    claims = train_claims(args.data)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with stack_with_corpus(
        args.data_dir, "rag-bench-semantic-cache-", STACK_ENV, args.namespace, corpus
    ) as stack:
        log(f"asking the {len(claims)} train claims, the answer cache skipped")
        answers = ask_each(stack.gateway_target, args.namespace, claims, args.clients)
    log("embedding the claims in process")
    vectors = TextEmbedder.load().embed([claim.text for claim in claims], query=True)
    similarities = vectors @ vectors.T
    tallies = [
        tally(replay(claims, similarities, threshold, guard=guard), claims, answers)
        for threshold in THRESHOLDS
        for guard in (True, False)
    ]
    disagreements = [
        t.replay.threshold
        for t in tallies
        if t.replay.guard
        and not same_hits(by_the_gateway_cache(claims, vectors, t.replay.threshold), t.replay)
    ]
    return Result(
        machine=describe(),
        load_at_start=load_at_start,
        documents=len(corpus.documents),
        namespace=args.namespace,
        claims=claims,
        answers=answers,
        tallies=tallies,
        pairs=[pairs_at(claims, similarities, answers, threshold) for threshold in THRESHOLDS],
        opposites=opposite_pairs(claims, similarities, answers),
        disagreements=disagreements,
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument(
        "--data-dir", type=Path, help="keep the stack's data here, to reuse the ingested corpus"
    )
    arguments.add_argument(
        "--namespace", default=NAMESPACE, help="where the corpus is ingested (default %(default)s)"
    )
    arguments.add_argument("--documents", type=int, help="ingest only the first N documents")
    arguments.add_argument("--clients", type=int, default=2, help="Asks at once (default %(default)s)")
    arguments.add_argument("--data", type=Path, default=DEFAULT_SCIFACT, help="SciFact in BEIR format")
    report(run(arguments.parse_args()))


if __name__ == "__main__":
    main()
