"""`rag eval-answers` against the running system: the shipped samples golden set, a failing one, and an LLM
judge behind the OpenAI protocol."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag_cli.answers import golden
from rag_cli.main import main
from rag_cli.stack import Stack
from tests.conftest import REPO_ROOT, SAMPLES
from tests.generator.test_openai_backend import FakeChatServer, Reply, completion

SAMPLES_GOLDEN = REPO_ROOT / "golden" / "samples.jsonl"


@pytest.fixture
def samples_namespace(stack: Stack, namespace: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The test's namespace holding samples/, ingested as `rag up` ingests it."""
    code = main(["--gateway", stack.gateway_target, "--namespace", namespace, "ingest", str(SAMPLES)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return namespace


def _eval_answers(
    stack: Stack, capsys: pytest.CaptureFixture[str], golden_path: Path, *options: str
) -> tuple[str, str]:
    code = main(["--gateway", stack.gateway_target, "eval-answers", str(golden_path), *options])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, captured.err


def test_the_extractive_generator_passes_the_samples_golden_set(
    stack: Stack, samples_namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = tmp_path / "out.json"

    out, err = _eval_answers(
        stack, capsys, SAMPLES_GOLDEN, "--namespace", samples_namespace, "--json", str(out_path)
    )

    report: dict[str, Any] = json.loads(out_path.read_text())
    items = {item["id"]: item for item in report["items"]}
    expected = golden.read(SAMPLES_GOLDEN)
    assert list(items) == [item.id for item in expected]
    for item in expected:
        result = items[item.id]
        assert result["namespace"] == samples_namespace
        if not item.answerable:
            assert result["outcome"] == "refused", result["answer"]
            continue
        assert result["outcome"] == "answered", item.question
        cited = {source["document_id"] for source in result["sources"] if source["cited"]}
        assert item.expected_documents is not None
        assert cited & set(item.expected_documents), (item.question, result["answer"])
        assert result["metrics"]["citation_coverage"] == 1.0
        # Quoted sentences restate their sources word for word.
        assert result["metrics"]["faithfulness"] == 1.0
    summary = report["summary"]
    assert summary["outcome"]["accuracy"] == 1.0
    assert summary["outcome"]["table"]["answerable"]["refused"] == 0
    assert summary["outcome"]["table"]["unanswerable"]["answered"] == 0
    assert set(summary["metrics"]) == {
        "context_precision",
        "average_precision",
        "context_recall",
        "citation_precision",
        "citation_coverage",
        "faithfulness",
        "token_f1",
        "answer_similarity",
    }
    answerable = summary["answerable"]
    assert summary["metrics"]["context_recall"] == {"mean": 1.0, "items": answerable}
    assert summary["metrics"]["answer_similarity"]["items"] == answerable
    assert {"total", "embed", "retrieve", "generate"} <= set(summary["latency_ms"])
    assert summary["tokens"]["total"] == 0  # the extractive generator runs no model
    assert report["judge"].startswith("embedding proxy")
    # The table on stdout, the progress bars on stderr.
    assert "outcome accuracy 1.0000" in out
    assert "faithfulness by embedding proxy" in out
    assert "asking" in err


def test_failing_items_are_printed_with_why(
    stack: Stack, samples_namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden_path = tmp_path / "wrong.jsonl"
    items = [
        # The documents do answer it: answering is the failure.
        {
            "id": "said-unanswerable",
            "question": "When does the nightly base backup run?",
            "answerable": False,
        },
        {
            "id": "wrong-document",
            "question": "What is the hotel cap per night in Tier 1 cities?",
            "answerable": True,
            "expected_documents": ["oncall-handbook.md"],
        },
        {"id": "said-answerable", "question": "How many sick days can I take?", "answerable": True},
    ]
    golden_path.write_text(
        "".join(json.dumps({**item, "namespace": samples_namespace}) + "\n" for item in items)
    )

    out, _ = _eval_answers(stack, capsys, golden_path, "--failures", "2")

    assert "3 of 3 items fail, the first 2:" in out
    assert "  said-unanswerable: When does the nightly base backup run?" in out
    assert "    - answered an unanswerable question: " in out
    assert "    - wrong citation: [" in out
    assert "is expense-policy.md, expected oncall-handbook.md" in out
    assert "said-answerable" not in out  # beyond --failures 2
    assert "outcome accuracy 0.3333" in out  # the wrong document was still an answer, as it should be


@pytest.fixture
def fake_judge() -> Iterator[FakeChatServer]:
    server = FakeChatServer()
    server.start()
    yield server
    server.stop()


def test_an_llm_judge_rules_on_every_cited_sentence(
    stack: Stack,
    samples_namespace: str,
    fake_judge: FakeChatServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_judge.replies = [Reply(body=completion("NOT_SUPPORTED"))]
    out_path = tmp_path / "out.json"

    out, _ = _eval_answers(
        stack,
        capsys,
        SAMPLES_GOLDEN,
        *("--namespace", samples_namespace, "--limit", "2", "--json", str(out_path)),
        *("--judge-base-url", fake_judge.base_url, "--judge-model", "judge", "--judge-api-key", "sk-j"),
    )

    report = json.loads(out_path.read_text())
    sentences = [sentence for item in report["items"] for sentence in item["sentences"]]
    assert sentences
    assert {sentence["verdict"] for sentence in sentences} == {"not_supported"}
    # One request checks the judge up front, then one per sentence.
    assert len(fake_judge.requests) == 1 + len(sentences)
    assert report["summary"]["metrics"]["faithfulness"]["mean"] == 0.0
    assert report["judge"] == "LLM judge judge"
    assert "faithfulness by LLM judge judge" in out


def test_an_unreachable_judge_fails_before_anything_is_asked(capsys: pytest.CaptureFixture[str]) -> None:
    # No gateway listens at the target either: the judge is checked first.
    judge = ["--judge-base-url", "http://127.0.0.1:9/v1", "--judge-model", "judge"]
    code = main(["--gateway", "127.0.0.1:9", "--timeout", "5", "eval-answers", str(SAMPLES_GOLDEN), *judge])

    assert code == 2
    assert (
        "error: the judge judge at http://127.0.0.1:9/v1/ failed: Connection error" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--judge-model", "judge"], "--judge-base-url and --judge-model go together"),
        (["--judge-api-key", "k"], "--judge-api-key is for an LLM judge"),
        (["--namespace", "Not OK"], "--namespace must be lower-case letters"),
    ],
)
def test_refusals_before_asking(capsys: pytest.CaptureFixture[str], options: list[str], message: str) -> None:
    code = main(["--gateway", "127.0.0.1:9", "eval-answers", str(SAMPLES_GOLDEN), *options])

    assert code == 2
    assert message in capsys.readouterr().err
