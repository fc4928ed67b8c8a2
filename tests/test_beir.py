"""The BEIR loader on tiny folders written here, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rag_cli import beir
from rag_cli.main import main

QRELS_HEADER = "query-id\tcorpus-id\tscore\n"


def _jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def _write(
    folder: Path,
    corpus: list[dict[str, Any]],
    queries: list[dict[str, Any]],
    qrels: dict[str, str],
) -> Path:
    (folder / "qrels").mkdir(parents=True)
    _jsonl(folder / "corpus.jsonl", corpus)
    _jsonl(folder / "queries.jsonl", queries)
    for split, text in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text(text)
    return folder


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "tiny",
        corpus=[
            {"_id": "d1", "title": "Backups", "text": "Backups run nightly."},
            {"_id": "d2", "text": "Hotel cap is 180 a night."},  # no title
            {"_id": "d3", "title": "Empty", "text": "  \n"},  # blank text
            {"_id": 4, "title": "", "text": "Numeric id."},
        ],
        queries=[
            {"_id": "q1", "text": "when do backups run"},
            {"_id": "q2", "text": "what is empty"},
            {"_id": "q3", "text": "hotel cap"},
            {"_id": "q4", "text": "not judged in test"},
        ],
        qrels={
            "test": QRELS_HEADER + "q1\td1\t1\nq1\td2\t2\nq2\td3\t0\nq3\td2\t1\nq3\td1\t0\n",
            "train": QRELS_HEADER + "q4\td1\t1\n",
        },
    )


def test_loads_corpus_queries_and_judgments(dataset_dir: Path) -> None:
    dataset = beir.load(dataset_dir, "test")

    assert dataset.name == "tiny"
    assert dataset.split == "test"
    assert dataset.corpus == [
        beir.CorpusDocument("d1", "Backups", "Backups run nightly."),
        beir.CorpusDocument("d2", "", "Hotel cap is 180 a night."),
        beir.CorpusDocument("d3", "Empty", "  \n"),  # kept: ingest skips and counts it
        beir.CorpusDocument("4", "", "Numeric id."),
    ]
    assert dataset.queries == [
        beir.Query("q1", "when do backups run", {"d1": 1, "d2": 2}),
        beir.Query("q3", "hotel cap", {"d2": 1, "d1": 0}),
    ]


def test_queries_judged_only_with_score_0_are_not_run(dataset_dir: Path) -> None:
    dataset = beir.load(dataset_dir, "test")

    assert "q2" not in [query.id for query in dataset.queries]
    assert dataset.unjudged_queries == 1


def test_the_split_picks_the_qrels_file(dataset_dir: Path) -> None:
    dataset = beir.load(dataset_dir, "train")

    assert [query.id for query in dataset.queries] == ["q4"]
    assert dataset.unjudged_queries == 0


def test_qrels_without_header_and_with_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "qrels.tsv"
    path.write_text("q1\td1\t1\n\nq1\td2\t0\r\n")

    assert beir.read_qrels(path) == {"q1": {"d1": 1, "d2": 0}}


def test_a_missing_split_names_the_file_and_the_splits_found(dataset_dir: Path) -> None:
    with pytest.raises(beir.DatasetError, match=r"qrels/dev\.tsv: no such file; splits found: test, train"):
        beir.load(dataset_dir, "dev")


def test_a_missing_corpus_names_the_file(dataset_dir: Path) -> None:
    (dataset_dir / "corpus.jsonl").unlink()

    with pytest.raises(beir.DatasetError, match=r"corpus\.jsonl: no such file"):
        beir.load(dataset_dir, "test")


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        pytest.param(
            "corpus.jsonl",
            '{"_id": "d1", "text": "fine"}\n\n{"_id": "d2", "text": \n',
            r"corpus\.jsonl line 3: not valid JSON",
            id="bad JSON after a blank line",
        ),
        pytest.param(
            "corpus.jsonl", '["d1", "text"]\n', r"corpus\.jsonl line 1: expected a JSON object", id="array"
        ),
        pytest.param(
            "corpus.jsonl", '{"text": "no id"}\n', r'corpus\.jsonl line 1: "_id" must be', id="no _id"
        ),
        pytest.param(
            "corpus.jsonl", '{"_id": "d1"}\n', r'corpus\.jsonl line 1: "text" must be a string', id="no text"
        ),
        pytest.param(
            "corpus.jsonl",
            '{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n',
            r"corpus\.jsonl line 2: _id 'd1' repeats line 1",
            id="repeated id",
        ),
        pytest.param(
            "queries.jsonl",
            '{"_id": "q1", "text": " "}\n',
            r"queries\.jsonl line 1: .* blank",
            id="blank query",
        ),
        pytest.param(
            "queries.jsonl",
            b'{"_id": "q1", "text": "\xff"}\n',
            r"queries\.jsonl line 1: not UTF-8",
            id="bytes",
        ),
        pytest.param(
            "qrels/test.tsv",
            QRELS_HEADER + "q1\td1\t1\nq1 d2 1\n",
            r"qrels/test\.tsv line 3: expected query-id<TAB>corpus-id<TAB>integer score",
            id="spaces for tabs",
        ),
        pytest.param(
            "qrels/test.tsv",
            QRELS_HEADER + "q1\td1\thigh\n",
            r"qrels/test\.tsv line 2: expected",
            id="score not an integer",
        ),
        pytest.param(
            "qrels/test.tsv",
            QRELS_HEADER + "q9\td1\t1\n",
            r"qrels/test\.tsv: query 'q9' is judged but not in queries\.jsonl",
            id="judged query without text",
        ),
    ],
)
def test_a_bad_line_names_the_file_and_line(
    dataset_dir: Path, file: str, content: str | bytes, message: str
) -> None:
    path = dataset_dir / file
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)

    with pytest.raises(beir.DatasetError, match=message):
        beir.load(dataset_dir, "test")


def test_rag_eval_reports_a_bad_dataset_with_exit_code_2(
    dataset_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (dataset_dir / "queries.jsonl").write_text('{"_id": "q1", "text": "fine"}\nnot json\n')

    # The dataset is read before the gateway is called, so no gateway is needed here.
    code = main(["--gateway", "127.0.0.1:1", "eval", str(dataset_dir), "--json"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert f"error: {dataset_dir / 'queries.jsonl'} line 2: not valid JSON" in captured.err
