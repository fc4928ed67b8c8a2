"""`rag eval` against the running system, on a tiny BEIR dataset written here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2
from rag_cli import eval as evaluation
from rag_cli.main import main
from rag_cli.stack import Stack


def _eval_json(
    stack: Stack, capsys: pytest.CaptureFixture[str], *args: str, expect_code: int = 0
) -> dict[str, Any]:
    code = main(["--gateway", stack.gateway_target, "eval", *args, "--json", "--mode", "dense"])
    captured = capsys.readouterr()
    assert code == expect_code, captured.err
    report: dict[str, Any] = json.loads(captured.out)  # stdout holds the JSON and nothing else
    return report


def test_eval_scores_dense_retrieval_and_reingests_nothing(
    stack: Stack, dataset_dir: Path, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _eval_json(stack, capsys, str(dataset_dir), "--namespace", namespace)

    index_version = first["ingest"].pop("index_version")
    assert first["ingest"] == {
        "documents": 7,
        "skipped_blank_text": 1,
        "created": 6,
        "updated": 0,
        "unchanged": 0,
    }
    # The searches ran at least at the ingest's version.
    assert index_version > 0
    assert (first["dataset"], first["split"], first["namespace"]) == ("tiny-BEIR set", "test", namespace)
    assert (first["queries"], first["queries_without_relevant"]) == (4, 1)
    dense = first["modes"]["dense"]
    assert dense["queries"] == 4
    assert set(dense["metrics"]) == {"ndcg@10", "recall@100", "mrr@10"}
    assert all(0 <= value <= 1 for value in dense["metrics"].values())
    # Six documents on unrelated topics: each question finds its own document.
    assert dense["metrics"]["recall@100"] == 1.0
    assert dense["metrics"]["mrr@10"] > 0.5
    assert {"total", "embed", "retrieve"} <= set(dense["latency_ms"])
    assert all(set(p) == {"p50", "p95"} for p in dense["latency_ms"].values())

    second = _eval_json(stack, capsys, str(dataset_dir), "--namespace", namespace)

    # Nothing changed, so nothing moved the version.
    unchanged = {**first["ingest"], "created": 0, "unchanged": 6, "index_version": index_version}
    assert second["ingest"] == unchanged
    assert second["modes"]["dense"]["metrics"] == pytest.approx(dense["metrics"])


def test_eval_prints_a_table_per_mode(
    stack: Stack, dataset_dir: Path, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(dataset_dir), "--namespace", namespace, "--mode", "dense", "--limit", "2"]
    code = main(["--gateway", stack.gateway_target, *args])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "tiny-BEIR set, split test: 2 queries (1 judged without a relevant document" in captured.out
    assert "6 created, 0 updated, 0 unchanged, 1 skipped with blank text" in captured.out
    header, row = captured.out.split("\n\n")[1].splitlines()[:2]
    assert header.split()[:5] == ["mode", "queries", "nDCG@10", "Recall@100", "MRR@10"]
    assert row.split()[:2] == ["dense", "2"]
    assert "ingesting" in captured.err  # progress bars go to stderr


# The pieces, without the system.


@pytest.mark.parametrize(
    ("folder", "namespace"),
    [
        ("scifact", "eval-scifact"),
        ("/data/BEIR/NFCorpus", "eval-nfcorpus"),
        ("tiny-BEIR set", "eval-tiny-beir-set"),
        ("cqadupstack.gis_v1", "eval-cqadupstack-gis_v1"),
        ("ÄÖÜ", "eval-dataset"),
        ("x" * 80, "eval-" + "x" * 58),
    ],
)
def test_default_namespace_follows_the_namespace_rule(folder: str, namespace: str) -> None:
    assert evaluation.default_namespace(Path(folder)) == namespace


def test_a_document_ranks_where_its_best_chunk_does() -> None:
    hits = [
        retriever_pb2.SearchHit(document_id=doc, chunk_index=chunk)
        for doc, chunk in [("b", 3), ("a", 0), ("b", 1), ("c", 0), ("a", 2)]
    ]

    assert evaluation.rank_documents(hits) == ["b", "a", "c"]


def test_stage_durations_add_up_a_repeated_stage() -> None:
    timings = [
        common_pb2.StageTiming(stage="embed", duration_ms=2.0),
        common_pb2.StageTiming(stage="retrieve", duration_ms=5.0),
        common_pb2.StageTiming(stage="embed", duration_ms=1.5),
    ]

    assert evaluation.stage_durations(timings) == {"embed": 3.5, "retrieve": 5.0}


def test_render_shows_a_rejected_mode_in_its_row() -> None:
    dense = evaluation.ModeResult(
        "dense",
        queries=3,
        metrics={"ndcg@10": 0.5, "recall@100": 1.0, "mrr@10": 0.25},
        latency_ms={"total": {"p50": 10.0, "p95": 12.5}, "embed": {"p50": 4.0, "p95": 5.0}},
    )
    keyword = evaluation.ModeResult("keyword", error="INVALID_ARGUMENT: mode KEYWORD is not offered")
    report = {
        "dataset": "d",
        "split": "test",
        "namespace": "eval-d",
        "top_k": 100,
        "queries": 3,
        "queries_without_relevant": 0,
        "ingest": {"documents": 2, "skipped_blank_text": 0, "created": 2, "updated": 0, "unchanged": 0},
        "modes": {r.mode: r.to_json() for r in (dense, keyword)},
    }

    lines = evaluation.render(report).splitlines()

    assert lines[0] == "d, split test: 3 queries"
    heading = "mode  queries  nDCG@10  Recall@100  MRR@10  total ms p50/p95  embed ms p50/p95"
    assert lines[3].split() == heading.split()
    assert lines[4].split() == ["dense", "3", "0.5000", "1.0000", "0.2500", "10.0/12.5", "4.0/5.0"]
    assert lines[5].split()[:2] == ["keyword", "error:"]
    assert "mode KEYWORD is not offered" in lines[5]


def test_eval_rerank_rows_say_when_the_retriever_has_no_reranker(
    stack: Stack, dataset_dir: Path, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _eval_json(stack, capsys, str(dataset_dir), "--namespace", namespace, "--rerank", expect_code=2)

    assert report["modes"]["dense"]["queries"] == 4
    assert "FAILED_PRECONDITION" in report["modes"]["dense+rerank"]["error"]


def test_eval_runs_only_the_queries_listed(
    stack: Stack, dataset_dir: Path, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = tmp_path / "ids.txt"
    listed.write_text("q-moon\n\nq-honey\nnot-a-query\n")

    report = _eval_json(stack, capsys, str(dataset_dir), "--namespace", namespace, "--query-ids", str(listed))

    assert report["queries"] == 2
