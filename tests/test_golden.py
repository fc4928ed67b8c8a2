"""Golden sets: the reader's checks and messages, and the builder on a tiny BEIR folder written here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rag_cli.answers import golden
from rag_cli.answers.golden import GoldenItem, GoldenSetError
from rag_cli.main import main

REPO_ROOT = Path(__file__).resolve().parent.parent
GOOD = {"id": "q1", "question": "When do backups run?", "namespace": "default", "answerable": True}


def _file(tmp_path: Path, *lines: dict[str, Any] | str) -> Path:
    path = tmp_path / "golden.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_reads_items_with_and_without_the_optional_fields(tmp_path: Path) -> None:
    full = {
        **GOOD,
        "id": "q2",
        "expected_answer": "At 02:00 UTC.",
        "expected_documents": ["runbook.md"],
        "expected_chunks": ["The nightly base backup runs at 02:00 UTC."],
    }
    path = _file(tmp_path, GOOD, "", full, {**GOOD, "id": "q3", "answerable": False})

    items = golden.read(path)

    assert items == [
        GoldenItem("q1", "When do backups run?", "default", True),
        GoldenItem(
            "q2",
            "When do backups run?",
            "default",
            True,
            "At 02:00 UTC.",
            ("runbook.md",),
            ("The nightly base backup runs at 02:00 UTC.",),
        ),
        GoldenItem("q3", "When do backups run?", "default", False),
    ]
    assert [item.to_json() for item in items] == [GOOD, full, {**GOOD, "id": "q3", "answerable": False}]


def test_write_reads_back(tmp_path: Path) -> None:
    items = [
        GoldenItem("a", "Wo läuft das Backup?", "ns-1", True, expected_documents=("doc.md", "other.md")),
        GoldenItem("a-out", "Wo läuft das Backup?", "ns-2", False),
    ]

    assert golden.write(tmp_path / "out.jsonl", items) == 2

    assert golden.read(tmp_path / "out.jsonl") == items


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON (Expecting property name"),
        ("[1, 2]", "line 2: expected a JSON object with id, question, namespace, answerable, got list"),
        (
            {**GOOD, "id": "q2", "expected_answers": "x"},
            "line 2: unknown field 'expected_answers'; the fields are id, question, namespace, answerable,"
            " expected_answer, expected_documents, expected_chunks",
        ),
        (
            {"id": "q2", "question": "Why?"},
            "line 2: missing 'namespace', 'answerable'; every item has id, question, namespace, answerable",
        ),
        (
            {**GOOD, "id": "q2", "answerable": "yes"},
            "line 2: \"answerable\" must be true or false, got 'yes'",
        ),
        ({**GOOD, "id": ""}, 'line 2: "id" must be a non-blank string'),
        ({**GOOD, "id": 7}, 'line 2: "id" must be a non-blank string, got 7'),
        ({**GOOD, "id": "q2", "question": "   "}, 'line 2: "question" must be a non-blank string'),
        (
            {**GOOD, "id": "q2", "question": "x" * 4001},
            '"question" must be at most 4000 characters, got 4001',
        ),
        (
            {**GOOD, "id": "q2", "namespace": "Default"},
            "line 2: \"namespace\" must be lower-case letters, digits, '_' and '-', 1..63 characters",
        ),
        (
            {**GOOD, "id": "q2", "expected_documents": []},
            'line 2: "expected_documents" must be a non-empty list of document ids',
        ),
        (
            {**GOOD, "id": "q2", "expected_documents": "runbook.md"},
            'line 2: "expected_documents" must be a non-empty list of document ids',
        ),
        ({**GOOD, "id": "q2", "expected_documents": ["a", 3]}, "; item 1 is 3"),
        ({**GOOD, "id": "q2", "expected_chunks": ["a", "a"]}, "; 'a' is listed twice"),
        ({**GOOD, "id": "q2", "expected_answer": ""}, 'line 2: "expected_answer" must be a non-blank string'),
        (
            {**GOOD, "id": "q2", "answerable": False, "expected_documents": ["runbook.md"]},
            "line 2: 'expected_documents' given for an unanswerable item; only answerable items have",
        ),
        (GOOD, "line 2: id 'q1' repeats line 1; ids must be unique"),
    ],
)
def test_refuses_a_bad_line_saying_what_is_accepted(
    tmp_path: Path, line: dict[str, Any] | str, message: str
) -> None:
    path = _file(tmp_path, GOOD, line)

    with pytest.raises(GoldenSetError) as error:
        golden.read(path)

    assert str(error.value).startswith(f"{path} line 2: ")
    assert message in str(error.value)


def test_refuses_a_missing_empty_or_undecodable_file(tmp_path: Path) -> None:
    with pytest.raises(GoldenSetError, match="no such file"):
        golden.read(tmp_path / "missing.jsonl")
    with pytest.raises(GoldenSetError, match="no items; expected one JSON object per line"):
        golden.read(_file(tmp_path, "", "  "))
    undecodable = tmp_path / "latin1.jsonl"
    undecodable.write_bytes(b'{"id": "caf\xe9"}\n')
    with pytest.raises(GoldenSetError, match="line 1: not UTF-8"):
        golden.read(undecodable)


def test_the_shipped_samples_golden_set_reads() -> None:
    items = golden.read(REPO_ROOT / "golden" / "samples.jsonl")

    answerable = [item for item in items if item.answerable]
    assert len(answerable) >= 10
    assert len(items) - len(answerable) >= 6
    samples = {path.name for path in (REPO_ROOT / "samples").iterdir()}
    assert all(item.expected_documents and set(item.expected_documents) <= samples for item in answerable)
    assert {item.namespace for item in items} == {"default"}


# The builder.


QRELS_HEADER = "query-id\tcorpus-id\tscore\n"


@pytest.fixture
def beir_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "Tiny Set"
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{n}", "title": "", "text": f"Document {n}."} for n in range(1, 5)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    queries = {
        "1": "Vitamin D lowers fracture risk.",
        "2": "Aspirin thins blood.",
        "3": "Unjudged.",
        "4": "x",
    }
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in queries.items())
    )
    (folder / "qrels" / "train.tsv").write_text(
        QRELS_HEADER + "1\td1\t1\n1\td2\t2\n2\td3\t1\n2\td4\t0\n3\td4\t0\n"
    )
    (folder / "qrels" / "test.tsv").write_text(QRELS_HEADER + "4\td1\t1\n")
    return folder


def _build(beir_dir: Path, out: Path, *options: str) -> list[GoldenItem]:
    code = main(["golden", "build-beir", str(beir_dir), "-o", str(out), *options])
    assert code == 0
    return golden.read(out)


def test_builds_answerable_items_from_the_train_split(
    beir_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = _build(beir_dir, tmp_path / "out.jsonl")

    # Only queries with a relevant document, expecting those documents; never the test split's query 4.
    assert items == [
        GoldenItem("q1", "Vitamin D lowers fracture risk.", "eval-tiny-set", True, None, ("d1", "d2")),
        GoldenItem("q2", "Aspirin thins blood.", "eval-tiny-set", True, None, ("d3",)),
    ]
    assert "wrote 2 items" in capsys.readouterr().out


def test_builds_unanswerable_twins_in_another_namespace(beir_dir: Path, tmp_path: Path) -> None:
    items = _build(
        beir_dir, tmp_path / "out.jsonl", "--namespace", "sci", "--unanswerable-namespace", "handbook"
    )

    assert [(item.id, item.namespace, item.answerable) for item in items] == [
        ("q1", "sci", True),
        ("q2", "sci", True),
        ("q1-out", "handbook", False),
        ("q2-out", "handbook", False),
    ]
    assert items[2].expected_documents is None


def test_a_limit_draws_the_same_seeded_sample_every_time(beir_dir: Path, tmp_path: Path) -> None:
    first = _build(
        beir_dir, tmp_path / "a.jsonl", "--limit", "1", "--seed", "3", "--unanswerable-namespace", "h"
    )
    again = _build(
        beir_dir, tmp_path / "b.jsonl", "--limit", "1", "--seed", "3", "--unanswerable-namespace", "h"
    )

    assert first == again
    assert len(first) == 2
    assert first[1].id == first[0].id + "-out"


def test_reads_the_test_split_only_when_asked(beir_dir: Path, tmp_path: Path) -> None:
    items = _build(beir_dir, tmp_path / "out.jsonl", "--split", "test")

    assert [item.id for item in items] == ["q4"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--unanswerable-namespace", "eval-tiny-set"], "--unanswerable-namespace must differ"),
        (["--namespace", "Bad Name"], "--namespace must be lower-case letters"),
        (["--unanswerable-namespace", "x.y"], "--unanswerable-namespace must be lower-case letters"),
        (["--split", "dev"], "qrels/dev.tsv: no such file; splits found: test, train"),
    ],
)
def test_builder_refusals(
    beir_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    code = main(["golden", "build-beir", str(beir_dir), "-o", str(tmp_path / "out.jsonl"), *options])

    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()
