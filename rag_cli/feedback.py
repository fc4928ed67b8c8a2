"""`rag feedback`: judge search results, list the judgments, and export them as BEIR qrels.

    rag feedback submit QUESTION DOC_ID#CHUNK=relevant|not-relevant ... [--rating good|bad]
    rag feedback list
    rag feedback export [--queries FILE]

A judgment names a chunk as `rag search` prints it (`expense-policy.md#2`);
the namespace is the global `-n`, which these commands also take after their
name. The export turns the namespace's feedback into a BEIR judgment set:
qrels on stdout, and with --queries the questions as queries.jsonl, for
`rag eval` or a reranker's training (feedback_judgments() is the same export
as a function).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from rag.retriever.v1 import retriever_pb2
from rag_cli.client import gateway_client
from rag_cli.render import snippet
from rag_cli.terminal import echo, printable
from rag_client import RagClient

LABELS = {
    "relevant": retriever_pb2.FEEDBACK_LABEL_RELEVANT,
    "not-relevant": retriever_pb2.FEEDBACK_LABEL_NOT_RELEVANT,
}
RATINGS = {"good": retriever_pb2.ANSWER_RATING_GOOD, "bad": retriever_pb2.ANSWER_RATING_BAD}
_RATING_NAMES = {value: name for name, value in RATINGS.items()}

QRELS_HEADER = "query-id\tcorpus-id\tscore"
# A query's id: this and the id of the first feedback that asked it.
QUERY_ID_PREFIX = "fb-"
# Feedback per ListFeedback call while exporting: the most a page holds.
_EXPORT_PAGE_SIZE = 1000


@dataclass(frozen=True)
class FeedbackJudgments:
    """A namespace's feedback as a judgment set, one query per distinct question."""

    # Query id -> the question, in the order the questions were first asked.
    queries: dict[str, str]
    # Query id -> document id -> 1 when a chunk of it was judged relevant, 0 when only not relevant.
    qrels: dict[str, dict[str, int]]
    # Query id -> (document id, chunk index) of each chunk judged relevant, in the judgments that
    # decided its document's score: for a trainer that reads judgments per chunk.
    relevant_chunks: dict[str, frozenset[tuple[str, int]]]


def feedback_judgments(feedback: Iterable[retriever_pb2.Feedback]) -> FeedbackJudgments:
    """The judgment set of `feedback`, taken in the order it was submitted (by id).

    Questions that differ only in spacing are one query, whose id is QUERY_ID_PREFIX
    and the id of the first feedback that asked it. Within one feedback a document
    scores 1 when any of its judged chunks is relevant, else 0; when the same
    question's document is judged again, the later feedback's score replaces the
    earlier one (its relevant chunks too). Documents deleted since are still in:
    whoever reads the judgments matches them against what is stored.
    """
    ids: dict[str, str] = {}  # question -> query id
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    chunks: dict[str, dict[str, set[tuple[str, int]]]] = {}
    for one in sorted(feedback, key=lambda f: f.feedback_id):
        question = " ".join(one.question.split())
        query_id = ids.setdefault(question, f"{QUERY_ID_PREFIX}{one.feedback_id}")
        queries.setdefault(query_id, question)
        relevant: dict[str, set[tuple[str, int]]] = {}
        for item in one.items:
            judged = relevant.setdefault(item.document_id, set())
            if item.label == retriever_pb2.FEEDBACK_LABEL_RELEVANT:
                judged.add((item.document_id, item.chunk_index))
        for document_id, relevant_chunks in relevant.items():
            qrels.setdefault(query_id, {})[document_id] = 1 if relevant_chunks else 0
            chunks.setdefault(query_id, {})[document_id] = relevant_chunks
    return FeedbackJudgments(
        queries=queries,
        qrels=qrels,
        relevant_chunks={
            query_id: frozenset(chunk for found in by_document.values() for chunk in found)
            for query_id, by_document in chunks.items()
        },
    )


def parse_judgment(text: str) -> retriever_pb2.FeedbackItem:
    """`DOC_ID#CHUNK=relevant|not-relevant`; split at the last '=' and '#', so an id may hold either."""
    target, _, label = text.rpartition("=")
    document_id, _, chunk = target.rpartition("#")
    expected = f"expected DOC_ID#CHUNK={'|'.join(LABELS)} (e.g. notes.md#0=relevant), got {text!r}"
    if not document_id or not chunk.isascii() or not chunk.isdigit() or label not in LABELS:
        raise argparse.ArgumentTypeError(expected)
    return retriever_pb2.FeedbackItem(document_id=document_id, chunk_index=int(chunk), label=LABELS[label])


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `feedback submit|list|export` to the `rag` parser's subcommands."""
    group = commands.add_parser(
        "feedback", help="judge search results; list and export the judgments", description=__doc__
    )
    actions = group.add_subparsers(dest="feedback_command", required=True)

    def namespace_option(command: argparse.ArgumentParser) -> None:
        # After the command's name too; unset, the global -n stands.
        command.add_argument("--namespace", "-n", default=argparse.SUPPRESS, help="as the global -n")

    command = actions.add_parser("submit", help="judge a question's search hits, chunk by chunk")
    namespace_option(command)
    command.add_argument("question")
    command.add_argument(
        "judgments",
        nargs="+",
        type=parse_judgment,
        metavar="DOC_ID#CHUNK=relevant|not-relevant",
        help="a chunk as `rag search` names it, and whether it answers the question",
    )
    command.add_argument("--rating", choices=list(RATINGS), help="a thumbs up or down on the answer")
    command.set_defaults(run=submit)

    command = actions.add_parser("list", help="the namespace's feedback, one line each, oldest first")
    namespace_option(command)
    command.set_defaults(run=list_feedback)

    command = actions.add_parser(
        "export", help="the namespace's feedback as BEIR qrels on stdout (and queries.jsonl)"
    )
    namespace_option(command)
    command.add_argument("--queries", type=Path, metavar="FILE", help="also write the questions here")
    command.set_defaults(run=export)


def _gateway(args: argparse.Namespace) -> RagClient:
    return gateway_client(args.gateway, args.settings.tls, args.api_key, args.timeout)


def submit(args: argparse.Namespace) -> int:
    rating = RATINGS[args.rating] if args.rating else None
    with _gateway(args) as gateway:
        stored = gateway.submit_feedback(args.namespace, args.question, args.judgments, answer_rating=rating)
    echo(f"feedback {stored.feedback_id}: {stored.item_count} judgments stored in {args.namespace!r}")
    return 0


def feedback_line(feedback: retriever_pb2.Feedback) -> str:
    """id, when, the answer's rating, relevant judgments of all, and the question on one line."""
    created = feedback.created_at.ToDatetime(tzinfo=UTC)
    rating = _RATING_NAMES.get(feedback.answer_rating, "-") if feedback.HasField("answer_rating") else "-"
    relevant = sum(item.label == retriever_pb2.FEEDBACK_LABEL_RELEVANT for item in feedback.items)
    return (
        f"{feedback.feedback_id}  {created:%Y-%m-%d %H:%M:%S} UTC  rating {rating}  "
        f"{relevant}/{len(feedback.items)} relevant  {snippet(feedback.question, 100)}"
    )


def list_feedback(args: argparse.Namespace) -> int:
    listed = 0
    with _gateway(args) as gateway:
        for feedback in gateway.iter_feedback(args.namespace, page_size=500):
            echo(feedback_line(feedback))
            listed += 1
    echo(f"{listed} feedback in {args.namespace!r}")
    return 0


def export(args: argparse.Namespace) -> int:
    with _gateway(args) as gateway:
        judgments = feedback_judgments(gateway.iter_feedback(args.namespace, page_size=_EXPORT_PAGE_SIZE))
    # The file first: one that cannot be written fails the export before anything is printed.
    if args.queries is not None:
        _write_queries(args.queries, judgments.queries)
    lines, unwritable = qrels_lines(judgments.qrels)
    for document_id in unwritable:
        echo(f"skipping document {document_id!r}: a qrels line cannot hold its id", error=True)
    for line in lines:
        echo(line)
    echo(f"{len(judgments.queries)} queries from the feedback in {args.namespace!r}", error=True)
    return 0


def qrels_lines(qrels: dict[str, dict[str, int]]) -> tuple[list[str], list[str]]:
    """(the qrels file's lines, header first; the document ids left out).

    An id with a tab or a line break would split its line, and one with other
    control characters would not survive the terminal-safe output (echo): such
    a judgment is left out, and named, rather than written wrong.
    """
    lines, unwritable = [QRELS_HEADER], []
    for query_id, scores in qrels.items():
        for document_id, score in scores.items():
            if "\t" in document_id or "\n" in document_id or printable(document_id) != document_id:
                unwritable.append(document_id)
            else:
                lines.append(f"{query_id}\t{document_id}\t{score}")
    return lines, list(dict.fromkeys(unwritable))


def _write_queries(path: Path, queries: dict[str, str]) -> None:
    lines: list[dict[str, Any]] = [{"_id": query_id, "text": text} for query_id, text in queries.items()]
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
