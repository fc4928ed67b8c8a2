"""A run's nDCG@10, Recall@100 and search times, and the table rows that show them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keyword_leg_bench.runs import Run
from rag_cli.metrics import ndcg_at_k, percentile, recall_at_k

LABEL_WIDTH = 44


@dataclass(frozen=True)
class Scores:
    ndcg10: float
    recall100: float
    median_ms: float
    p95_ms: float


def score(result: Run, qrels: dict[str, dict[str, float]]) -> Scores:
    ndcg = [ndcg_at_k(result.rankings[q], gains, 10) for q, gains in qrels.items()]
    recall = [recall_at_k(result.rankings[q], gains, 100) for q, gains in qrels.items()]
    return Scores(
        float(np.mean(ndcg)),
        float(np.mean(recall)),
        percentile(result.latencies_ms, 50),
        percentile(result.latencies_ms, 95),
    )


def print_header(title: str) -> None:
    print(
        f"\n{title:<{LABEL_WIDTH}} {'nDCG@10':>8} {'Recall@100':>11} {'median ms':>9} {'p95 ms':>8}",
        flush=True,
    )


def print_row(label: str, scores: Scores) -> None:
    print(
        f"{label:<{LABEL_WIDTH}} {scores.ndcg10:>8.3f} {scores.recall100:>11.3f}"
        f" {scores.median_ms:>9.1f} {scores.p95_ms:>8.1f}",
        flush=True,
    )
