"""Relevance feedback through the real gateway and retriever: submitted with `rag feedback submit` and
the client, listed, exported as a BEIR judgment set, and bad input refused naming the caller's field.

Auth and tenant isolation of both RPCs: tests/e2e/test_auth.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from rag_cli import beir
from rag_cli.main import main
from rag_cli.stack import Stack
from rag_client import RagClient
from tests.e2e.test_error_details import refusal

BACKUPS, EXPENSES, ONCALL = "postgres-backup-runbook.md", "expense-policy.md", "oncall-handbook.md"
LABELS = "FEEDBACK_LABEL_RELEVANT, FEEDBACK_LABEL_NOT_RELEVANT"


def _rag(stack: Stack, *args: str) -> int:
    return main(["--gateway", stack.gateway_target, *args])


def _item(document_id: str, chunk_index: int = 0, label: int = 1) -> retriever_pb2.FeedbackItem:
    return retriever_pb2.FeedbackItem(
        document_id=document_id, chunk_index=chunk_index, label=retriever_pb2.FeedbackLabel.ValueType(label)
    )


def _feedback_id(printed: str) -> int:
    """The id in what `rag feedback submit` printed."""
    stored = re.fullmatch(r"feedback (\d+): .*\n", printed)
    assert stored is not None, printed
    return int(stored[1])


def test_feedback_is_submitted_listed_and_exported_as_qrels(
    stack: Stack, three_documents: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = three_documents
    assert (
        _rag(
            stack,
            "-n",
            namespace,
            "feedback",
            "submit",
            "How long are backups kept?",
            f"{BACKUPS}#0=relevant",
            f"{EXPENSES}#0=not-relevant",
            "--rating",
            "good",
        )
        == 0
    )
    first = capsys.readouterr().out
    # The namespace may follow the command too.
    assert (
        _rag(
            stack,
            "feedback",
            "submit",
            "-n",
            namespace,
            "Who do I page?",
            f"{ONCALL}#0=not-relevant",
            f"{ONCALL}#1=relevant",
            f"{BACKUPS}#0=not-relevant",
        )
        == 0
    )
    second = capsys.readouterr().out
    # The first question again, from a program: its later judgment of the expense policy wins.
    with RagClient(stack.gateway_target) as client:
        third = client.submit_feedback(
            namespace,
            "How long are  backups kept? ",
            [_item(EXPENSES, 2)],
            answer_rating=retriever_pb2.ANSWER_RATING_BAD,
        )
        # Feedback outlives the documents it judges.
        client.delete_documents(namespace, [EXPENSES])
        listed = list(client.iter_feedback(namespace, page_size=2))
    first_id, second_id = _feedback_id(first), _feedback_id(second)

    assert _rag(stack, "-n", namespace, "feedback", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    queries_file = tmp_path / "queries.jsonl"
    assert _rag(stack, "feedback", "export", "-n", namespace, "--queries", str(queries_file)) == 0
    exported = capsys.readouterr()

    assert first == f"feedback {first_id}: 2 judgments stored in {namespace!r}\n"
    assert second_id > first_id
    assert third.feedback_id > second_id
    assert third.item_count == 1
    assert [f.feedback_id for f in listed] == [first_id, second_id, third.feedback_id]
    assert [(i.document_id, i.chunk_index, i.label) for i in listed[1].items] == [
        (ONCALL, 0, retriever_pb2.FEEDBACK_LABEL_NOT_RELEVANT),
        (ONCALL, 1, retriever_pb2.FEEDBACK_LABEL_RELEVANT),
        (BACKUPS, 0, retriever_pb2.FEEDBACK_LABEL_NOT_RELEVANT),
    ]
    assert [f.answer_rating if f.HasField("answer_rating") else None for f in listed] == [
        retriever_pb2.ANSWER_RATING_GOOD,
        None,
        retriever_pb2.ANSWER_RATING_BAD,
    ]

    assert len(lines) == 4
    assert re.fullmatch(
        rf"{first_id}  \S+ \S+ UTC  rating good  1/2 relevant  How long are backups kept\?", lines[0]
    )
    assert lines[1].endswith("rating -  1/3 relevant  Who do I page?")
    assert lines[3] == f"3 feedback in {namespace!r}"

    first_query, second_query = f"fb-{first_id}", f"fb-{second_id}"
    assert exported.out.splitlines() == [
        "query-id\tcorpus-id\tscore",
        f"{first_query}\t{BACKUPS}\t1",
        f"{first_query}\t{EXPENSES}\t1",
        f"{second_query}\t{ONCALL}\t1",
        f"{second_query}\t{BACKUPS}\t0",
    ]
    assert f"2 queries from the feedback in {namespace!r}" in exported.err
    assert [json.loads(line) for line in queries_file.read_text().splitlines()] == [
        {"_id": first_query, "text": "How long are backups kept?"},
        {"_id": second_query, "text": "Who do I page?"},
    ]
    # A BEIR folder made of the two files reads back as the same judgments.
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "feedback.tsv").write_text(exported.out)
    assert beir.read_qrels(tmp_path / "qrels" / "feedback.tsv") == {
        first_query: {BACKUPS: 1, EXPENSES: 1},
        second_query: {ONCALL: 1, BACKUPS: 0},
    }
    assert beir.read_queries(queries_file) == {
        first_query: "How long are backups kept?",
        second_query: "Who do I page?",
    }


def test_bad_feedback_is_refused_naming_the_field_and_what_is_accepted(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str
) -> None:
    without_documents = f"{three_documents[:50]}-nothing"

    def submit(**fields: Any) -> gateway_pb2.SubmitFeedbackRequest:
        fields.setdefault("namespace", three_documents)
        fields.setdefault("question", "How long are backups kept?")
        fields.setdefault("items", [_item(BACKUPS)])
        return gateway_pb2.SubmitFeedbackRequest(**fields)

    unknown = refusal(lambda: gateway.SubmitFeedback(submit(namespace=without_documents)))
    blank = refusal(lambda: gateway.SubmitFeedback(submit(question=" \n\t")))
    unspecified = refusal(lambda: gateway.SubmitFeedback(submit(items=[_item(BACKUPS), _item(ONCALL, 0, 0)])))
    out_of_range = refusal(lambda: gateway.SubmitFeedback(submit(items=[_item(BACKUPS, 0, 7)])))
    negative_chunk = refusal(lambda: gateway.SubmitFeedback(submit(items=[_item(BACKUPS, -1)])))
    no_id = refusal(lambda: gateway.SubmitFeedback(submit(items=[_item("")])))
    ten_thousand = refusal(
        lambda: gateway.SubmitFeedback(submit(items=[_item(BACKUPS, i) for i in range(10_000)]))
    )
    bad_token = refusal(
        lambda: gateway.ListFeedback(
            gateway_pb2.ListFeedbackRequest(namespace=three_documents, page_token="x*")
        )
    )
    bad_page_size = refusal(
        lambda: gateway.ListFeedback(
            gateway_pb2.ListFeedbackRequest(namespace=three_documents, page_size=1001)
        )
    )

    cases = {
        "unknown namespace": (
            unknown,
            "namespace",
            f"retriever: namespace '{without_documents}' holds no documents",
        ),
        "blank question": (blank, "question", "question must not be empty or blank"),
        "label unspecified": (
            unspecified,
            "items[1].label",
            f"retriever: items[1].label must be one of {LABELS}; got 0",
        ),
        "label out of range": (
            out_of_range,
            "items[0].label",
            f"retriever: items[0].label must be one of {LABELS}; got 7",
        ),
        "negative chunk": (
            negative_chunk,
            "items[0].chunk_index",
            "retriever: items[0].chunk_index must be 0..2147483647, got -1",
        ),
        "empty document id": (
            no_id,
            "items[0].document_id",
            "retriever: items[0].document_id must not be empty or blank",
        ),
        "10000 items": (ten_thousand, "items (count)", "retriever: items (count) must be 1..1000, got 10000"),
        "bad page token": (bad_token, "page_token", "retriever: page_token is not one this service issued"),
        "page size": (bad_page_size, "page_size", "retriever: page_size must be 1..1000, got 1001"),
    }
    for case, (refused, field, message) in cases.items():
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, case
        assert refused.fields == [field], case
        assert refused.message.startswith(message), (case, refused.message)
    # Nothing of them was stored.
    assert (
        list(gateway.ListFeedback(gateway_pb2.ListFeedbackRequest(namespace=three_documents)).feedback) == []
    )


def test_the_cli_shows_a_refusal_and_a_malformed_judgment(
    stack: Stack, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = _rag(stack, "-n", namespace, "feedback", "submit", "Why?", "notes.md#0=relevant")
    error = capsys.readouterr().err
    with pytest.raises(SystemExit) as malformed:
        _rag(stack, "-n", namespace, "feedback", "submit", "Why?", "notes.md=relevant")
    usage = capsys.readouterr().err

    assert refused == 2
    assert error.startswith(f"error: INVALID_ARGUMENT: retriever: namespace {namespace!r} holds no documents")
    assert "\n  namespace: " in error
    assert malformed.value.code == 2
    assert "expected DOC_ID#CHUNK=relevant|not-relevant" in usage
