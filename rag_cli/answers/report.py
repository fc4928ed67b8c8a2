"""The report of a run: a summary over the items, the JSON document, and the text for the terminal."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from rag_cli import metrics as retrieval_metrics
from rag_cli import render
from rag_cli.answers import metrics
from rag_cli.answers.run import TOTAL
from rag_cli.answers.scoring import ITEM_METRICS, ItemScore

PERCENTILES = (50, 95)
# Table headings of the per-item metrics; context precision's (_label) names its k when it is known.
LABELS = {
    "average_precision": "context average precision",
    "context_recall": "context recall",
    "citation_precision": "citation precision",
    "citation_coverage": "citation coverage",
    "faithfulness": "faithfulness",
    "token_f1": "answer token F1",
    "answer_similarity": "answer similarity",
}


def summary(scores: Sequence[ItemScore]) -> dict[str, Any]:
    """Outcome table, each metric's mean over the items it applies to, latency and tokens."""
    table = metrics.outcome_table((score.asked.item.answerable, score.asked.answered) for score in scores)
    per_metric = {name: [score.metric(name) for score in scores] for name in ITEM_METRICS}
    prompt = sum(score.asked.prompt_tokens for score in scores)
    completion = sum(score.asked.completion_tokens for score in scores)
    return {
        "items": len(scores),
        "answerable": table.answerable_answered + table.answerable_refused,
        "unanswerable": table.unanswerable_answered + table.unanswerable_refused,
        "outcome": {
            "accuracy": table.accuracy,
            "answered_rate": table.answered_rate,
            "refusal_rate": table.refusal_rate,
            "table": {
                "answerable": {"answered": table.answerable_answered, "refused": table.answerable_refused},
                "unanswerable": {
                    "answered": table.unanswerable_answered,
                    "refused": table.unanswerable_refused,
                },
            },
        },
        "metrics": {
            name: {
                "mean": metrics.mean(values),
                "items": sum(value is not None for value in values),
            }
            for name, values in per_metric.items()
        },
        "latency_ms": latency(scores),
        "tokens": {
            "prompt": prompt,
            "completion": completion,
            "total": prompt + completion,
            "per_question": (prompt + completion) / len(scores) if scores else 0.0,
        },
        "failing_items": sum(bool(score.failures) for score in scores),
    }


def latency(scores: Sequence[ItemScore]) -> dict[str, dict[str, float]]:
    """p50 and p95 per stage, and of the whole Ask (total, first)."""
    durations: dict[str, list[float]] = defaultdict(list)
    for score in scores:
        for stage, duration_ms in score.asked.timings_ms.items():
            durations[stage].append(duration_ms)
    stages = sorted(durations, key=lambda stage: stage != TOTAL)
    return {
        stage: {f"p{p}": retrieval_metrics.percentile(durations[stage], p) for p in PERCENTILES}
        for stage in stages
    }


def document(
    golden: str, judge: str, settings: Mapping[str, Any], scores: Sequence[ItemScore]
) -> dict[str, Any]:
    """The whole report, as --json writes it."""
    return {
        "golden": golden,
        "judge": judge,
        "settings": dict(settings),
        "summary": summary(scores),
        "items": [score.to_json() for score in scores],
    }


def render_text(report: Mapping[str, Any], failures: Sequence[ItemScore], top_k: int | None) -> str:
    """The summary as tables, then the failing items given (with why)."""
    totals = report["summary"]
    outcome = totals["outcome"]
    grid = outcome["table"]
    lines = [
        f"{report['golden']}: {totals['items']} questions"
        f" ({totals['answerable']} answerable, {totals['unanswerable']} unanswerable)",
        "",
        *table(
            ["expected \\ got", "answered", "refused", "right"],
            [
                ["answerable", *_counts(grid["answerable"]), _value(outcome["answered_rate"])],
                ["unanswerable", *_counts(grid["unanswerable"]), _value(outcome["refusal_rate"])],
            ],
        ),
        f"outcome accuracy {_value(outcome['accuracy'])}",
        "",
        *table(
            ["metric", "mean", "items"],
            [
                [_label(name, top_k), _value(value["mean"]), str(value["items"])]
                for name, value in totals["metrics"].items()
            ],
        ),
        f"faithfulness by {report['judge']}",
        "",
        *table(
            ["stage", "p50 ms", "p95 ms"],
            [[stage, f"{ms['p50']:.1f}", f"{ms['p95']:.1f}"] for stage, ms in totals["latency_ms"].items()],
        ),
        "",
        f"tokens: {totals['tokens']['prompt']} prompt, {totals['tokens']['completion']} completion"
        f" ({totals['tokens']['per_question']:.1f} per question)",
    ]
    if totals["failing_items"]:
        shown = f", the first {len(failures)}:" if failures else " (--failures N shows them)"
        lines += ["", f"{totals['failing_items']} of {totals['items']} items fail{shown}"]
    for score in failures:
        item = score.asked.item
        lines.append(f"  {item.id}: {render.snippet(item.question, 100)}")
        lines += [f"    - {failure}" for failure in score.failures]
    return "\n".join(lines)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return [
        "  ".join(
            f"{cell:<{width}}" if column == 0 else f"{cell:>{width}}"
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]


def _counts(row: Mapping[str, int]) -> list[str]:
    return [str(row["answered"]), str(row["refused"])]


def _label(name: str, top_k: int | None) -> str:
    if name == "context_precision":
        return f"context precision@{top_k}" if top_k else "context precision (all sources)"
    return LABELS[name]


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
