"""Rerank quality against its latency: nDCG@10 and the rerank stage's time per query, side by side.

    python bench/reranker.py MODEL [MODEL ...] [--top-n 10 20 30 50] [--gateway HOST:PORT --namespace NS]
                             [--data ../shared/datasets/scifact] [--split train]

Each MODEL is a folder `rag reranker train` wrote. The queries are its
held-back share (validation-queries.txt: never trained on), the candidates
each one's hybrid search through the gateway in fused order (rerank off),
and every model scores them as the retriever's rerank stage does: the ONNX
export (and its int8 twin when the folder has one) run by ONNX Runtime on
every core, the first N candidates reordered, in batches of the stage's
size. The time is that scoring, per query, in this process: the stage's own
cost without the hops around it. Without --gateway, a stack is started on an
embedded PostgreSQL and the corpus ingested first (minutes on SciFact).

Rows: model (its encoder layers and max tokens per pair, from its card),
file, N; columns: nDCG@10 of the fused order, of the reranked order (the
cross-encoder's order replacing the fused one) and of the two fused by
reciprocal rank (`rrf`, the cross-encoder's rank weighted 0.5 and 1 against the
fused rank's 1, k 60), then p50 and p95 milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from benchkit.cli import DEFAULT_SCIFACT, parser
from benchkit.machine import describe, load_average
from benchkit.output import log
from benchkit.stack import running_stack
from rag_cli import beir, metrics
from rag_cli import eval as evaluation
from rag_cli.reranker import judgments, validation
from rag_cli.reranker.command import VALIDATION_IDS_FILE
from rag_client import RagClient
from services.retriever import rerank_stage
from services.retriever.rerank_folder import CARD_FILE, DEFAULT_ONNX_FILE, QUANTIZED_ONNX_FILE
from services.retriever.rerank_onnx import load_onnx_cross_encoder

CANDIDATES = 100
# (RETRIEVER_RERANK_FUSION, its weight): the orders compared, as columns.
FUSIONS = (("replace", 1.0), ("rrf", 0.5), ("rrf", 1.0))


@contextlib.contextmanager
def gateway(
    args: argparse.Namespace, corpus: list[beir.CorpusDocument]
) -> Iterator[tuple[RagClient, str, int]]:
    """(client, namespace, index version): the one given, or a stack of our own with the corpus in it."""
    if args.gateway:
        with RagClient(args.gateway, timeout_s=120) as client:
            yield client, args.namespace, 0
        return
    log("starting a stack on an embedded PostgreSQL, then ingesting the corpus")
    with (
        running_stack("rag-bench-reranker-", {}) as stack,
        RagClient(stack.gateway_target, timeout_s=300) as client,
    ):
        ingested = evaluation.ingest_corpus(client, args.namespace, corpus, judgments.INGEST_BATCH)
        yield client, args.namespace, ingested.index_version


def rows(
    folder: Path,
    queries: Sequence[judgments.JudgedQuery],
    candidates: dict[str, list[judgments.Candidate]],
    top_ns: Sequence[int],
) -> Iterator[list[str]]:
    card = json.loads((folder / CARD_FILE).read_text())
    settings = card["settings"]
    layers = settings.get("layers") or "all"
    max_length = int(settings["max_length"])
    files = [f for f in (DEFAULT_ONNX_FILE, QUANTIZED_ONNX_FILE) if (folder / f).is_file()]
    for onnx_file in files:
        model = load_onnx_cross_encoder(folder, max_length=max_length, onnx_file=onnx_file)
        for top_n in top_ns:
            took: list[float] = []
            timed = _timed(model.score, took)
            scores = validation.score_candidates(queries, candidates, top_n, timed)
            ndcgs = [
                validation.validate(
                    queries, candidates, scores, top_n, rerank_stage.fusion_order(f, weight=w)
                )
                for f, w in FUSIONS
            ]
            yield [
                f"{folder.name} ({layers} layers, {max_length} tokens)",
                Path(onnx_file).name,
                str(top_n),
                f"{ndcgs[0].fused_ndcg:.4f}",
                *(f"{v.reranked_ndcg:.4f}" for v in ndcgs),
                f"{statistics.median(took):.1f}",
                f"{metrics.percentile(took, 95):.1f}",
            ]


def _timed(score: Callable[[Sequence[tuple[str, str]]], list[float]], took: list[float]) -> validation.Scorer:
    """`score`, appending each call's milliseconds to `took`."""

    def timed(pairs: Sequence[tuple[str, str]]) -> list[float]:
        started = time.perf_counter()
        scores = score(pairs)
        took.append((time.perf_counter() - started) * 1000)
        return scores

    return timed


def main() -> None:
    command = parser(__doc__)
    command.add_argument("models", nargs="+", type=Path)
    command.add_argument("--top-n", nargs="+", type=int, default=[10, 20, 30, 50])
    command.add_argument("--gateway", help="a running gateway whose --namespace holds the corpus")
    command.add_argument("--namespace", default="bench-reranker")
    command.add_argument("--data", type=Path, default=DEFAULT_SCIFACT)
    command.add_argument("--split", default="train")
    args = command.parse_args()
    load_at_start = load_average()
    dataset = beir.load(args.data, args.split)
    held_back = set().union(*(set((m / VALIDATION_IDS_FILE).read_text().split()) for m in args.models))
    queries = [judgments.JudgedQuery(q.id, q.text, q.gains) for q in dataset.queries if q.id in held_back]
    with gateway(args, dataset.corpus) as (client, namespace, version):
        log(f"searching {len(queries)} held-back queries")
        candidates = judgments.fused_candidates(client, namespace, queries, CANDIDATES, version)
    header = ["model", "file", "N", "fused", *(f"{f} {w:g}" for f, w in FUSIONS), "p50 ms", "p95 ms"]
    table = [header]
    for folder in args.models:
        log(f"scoring with {folder}")
        table += list(rows(folder, queries, candidates, args.top_n))
    print(f"Rerank stage on {dataset.name} {args.split}, {len(queries)} held-back queries (nDCG@10)")
    print(f"machine: {describe()}")
    print(f"load average {load_at_start} at the start, {load_average()} at the end")
    print()
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(
                cell.ljust(width) if i < 2 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=False))
            )
        )


if __name__ == "__main__":
    main()
