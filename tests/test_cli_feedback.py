"""`rag feedback`'s parts that need no gateway: the export to BEIR qrels, the judgment syntax, the lines."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rag.retriever.v1 import retriever_pb2
from rag_cli import beir
from rag_cli.feedback import (
    QRELS_HEADER,
    feedback_judgments,
    feedback_line,
    parse_judgment,
    qrels_lines,
)

RELEVANT = retriever_pb2.FEEDBACK_LABEL_RELEVANT
NOT_RELEVANT = retriever_pb2.FEEDBACK_LABEL_NOT_RELEVANT


def feedback(
    feedback_id: int, question: str, *items: tuple[str, int, int], rating: int | None = None
) -> retriever_pb2.Feedback:
    message = retriever_pb2.Feedback(
        feedback_id=feedback_id,
        question=question,
        items=[
            retriever_pb2.FeedbackItem(
                document_id=document_id,
                chunk_index=chunk_index,
                label=retriever_pb2.FeedbackLabel.ValueType(label),
            )
            for document_id, chunk_index, label in items
        ],
    )
    if rating is not None:
        message.answer_rating = retriever_pb2.AnswerRating.ValueType(rating)
    message.created_at.FromDatetime(datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC))
    return message


# Given out of order: the export goes by feedback id.
FEEDBACK = [
    feedback(
        7,
        "Who do I page at night?",
        ("oncall.md", 0, NOT_RELEVANT),
        ("oncall.md", 2, RELEVANT),
        ("backups.md", 1, NOT_RELEVANT),
    ),
    feedback(
        3,
        "How long are backups kept?",
        ("backups.md", 0, RELEVANT),
        ("backups.md", 4, NOT_RELEVANT),
        ("expenses.md", 0, NOT_RELEVANT),
        ("deleted-since.md", 2, RELEVANT),
    ),
    # The first question again, spaced differently: one query. Its later judgments replace the
    # earlier ones of the same documents; the documents it does not judge keep theirs.
    feedback(
        9, "  How long are\nbackups  kept? ", ("expenses.md", 3, RELEVANT), ("backups.md", 0, NOT_RELEVANT)
    ),
    feedback(12, "Who approves hotels?", ("expenses.md", 1, NOT_RELEVANT)),
]


def test_the_export_has_one_query_per_question_and_the_latest_judgment_of_each_document() -> None:
    judgments = feedback_judgments(FEEDBACK)
    queries, qrels = judgments.queries, judgments.qrels

    assert queries == {
        "fb-3": "How long are backups kept?",
        "fb-7": "Who do I page at night?",
        "fb-12": "Who approves hotels?",
    }
    assert qrels == {
        "fb-3": {"backups.md": 0, "expenses.md": 1, "deleted-since.md": 1},
        "fb-7": {"oncall.md": 1, "backups.md": 0},
        "fb-12": {"expenses.md": 0},
    }


def test_the_relevant_chunks_are_those_of_the_deciding_judgments() -> None:
    judgments = feedback_judgments(iter(FEEDBACK))

    assert judgments.relevant_chunks == {
        "fb-3": frozenset({("expenses.md", 3), ("deleted-since.md", 2)}),
        "fb-7": frozenset({("oncall.md", 2)}),
        "fb-12": frozenset(),
    }


def test_no_feedback_exports_an_empty_set() -> None:
    empty = feedback_judgments([])
    assert (empty.queries, empty.qrels) == ({}, {})
    assert qrels_lines({}) == ([QRELS_HEADER], [])


def test_the_qrels_lines_read_back_as_a_beir_set(tmp_path: Path) -> None:
    qrels = feedback_judgments(FEEDBACK).qrels
    lines, unwritable = qrels_lines(qrels)
    path = tmp_path / "test.tsv"
    path.write_text("".join(line + "\n" for line in lines))

    assert lines[0] == "query-id\tcorpus-id\tscore"
    assert lines[1] == "fb-3\tbackups.md\t0"
    assert unwritable == []
    assert beir.read_qrels(path) == qrels


def test_ids_a_qrels_line_cannot_hold_are_left_out_and_named() -> None:
    qrels = {"fb-1": {"a\tb": 1, "line\nbreak": 0, "bell\x07": 1, "fine id #2=ok": 1}, "fb-2": {"a\tb": 0}}

    lines, unwritable = qrels_lines(qrels)

    assert lines == [QRELS_HEADER, "fb-1\tfine id #2=ok\t1"]
    assert unwritable == ["a\tb", "line\nbreak", "bell\x07"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("notes.md#0=relevant", ("notes.md", 0, RELEVANT)),
        ("runbooks/backups.md#12=not-relevant", ("runbooks/backups.md", 12, NOT_RELEVANT)),
        # The last '#' and '=' split: an id may hold either.
        ("a#b=c.md#3=relevant", ("a#b=c.md", 3, RELEVANT)),
    ],
)
def test_a_judgment_names_a_chunk_and_its_label(text: str, expected: tuple[str, int, int]) -> None:
    item = parse_judgment(text)

    assert (item.document_id, item.chunk_index, item.label) == expected


@pytest.mark.parametrize(
    "text",
    [
        "notes.md=relevant",
        "notes.md#0",
        "notes.md#=relevant",
        "#0=relevant",
        "notes.md#-1=relevant",
        "notes.md#0=yes",
        "notes.md#٣=relevant",
        "notes.md#0=RELEVANT",
    ],
)
def test_a_malformed_judgment_says_what_is_expected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected DOC_ID#CHUNK=relevant\|not-relevant"):
        parse_judgment(text)


def test_a_feedback_line_is_one_line() -> None:
    line = feedback_line(
        feedback(3, "How long\nare backups kept?", ("a", 0, RELEVANT), ("b", 1, NOT_RELEVANT), rating=1)
    )
    unrated = feedback_line(feedback(4, "q", ("a", 0, NOT_RELEVANT)))

    assert line == "3  2026-03-01 12:30:05 UTC  rating good  1/2 relevant  How long are backups kept?"
    assert unrated == "4  2026-03-01 12:30:05 UTC  rating -  0/1 relevant  q"
