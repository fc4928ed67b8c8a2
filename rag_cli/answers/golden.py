"""A golden set: questions and what a right answer to each looks like, one JSON object per line.

    {"id": "backup-time", "question": "When do the nightly backups run?", "namespace": "default",
     "answerable": true, "expected_answer": "At 02:00 UTC.",
     "expected_documents": ["postgres-backup-runbook.md"]}

`id` (unique in the file), `question`, `namespace` and `answerable` (true: the namespace's documents
hold the answer; false: the right reply is "cannot answer") are required. An answerable item may add
`expected_answer`, `expected_documents` (the ids of the documents that hold the answer, as the
namespace stores them) and `expected_chunks` (the passages that hold it); an unanswerable one has
none of them, since there is nothing to expect. Any other field is refused, so that a misspelt
field name is not silently ignored.

read() checks every line and stops at the first problem with a GoldenSetError saying
"<file> line N: <what is wrong>; <what is accepted>". Blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_cli import beir
from services.common.limits import MAX_DOCUMENT_ID_CHARS, MAX_QUESTION_CHARS
from services.common.validation import NAMESPACE_PATTERN, NAMESPACE_RULE

REQUIRED_FIELDS = ("id", "question", "namespace", "answerable")
OPTIONAL_FIELDS = ("expected_answer", "expected_documents", "expected_chunks")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS


class GoldenSetError(ValueError):
    """The golden set file is missing, or one of its lines is not a valid item."""


@dataclass(frozen=True)
class GoldenItem:
    id: str
    question: str
    namespace: str
    # True: the namespace's documents hold the answer; False: the right reply is "cannot answer".
    answerable: bool
    expected_answer: str | None = None
    # None when not given: the metrics that need them skip the item.
    expected_documents: tuple[str, ...] | None = None
    expected_chunks: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        """The item as a golden set line holds it: the fields not given are left out."""
        record: dict[str, Any] = {
            "id": self.id,
            "question": self.question,
            "namespace": self.namespace,
            "answerable": self.answerable,
        }
        if self.expected_answer is not None:
            record["expected_answer"] = self.expected_answer
        if self.expected_documents is not None:
            record["expected_documents"] = list(self.expected_documents)
        if self.expected_chunks is not None:
            record["expected_chunks"] = list(self.expected_chunks)
        return record


def read(path: Path) -> list[GoldenItem]:
    """Every item of the file, in file order; GoldenSetError at the first line that is not one."""
    items: list[GoldenItem] = []
    first_line: dict[str, int] = {}
    for number, record in _records(path):
        try:
            item = parse_item(record)
        except ValueError as error:
            raise GoldenSetError(f"{path} line {number}: {error}") from None
        if item.id in first_line:
            raise GoldenSetError(
                f"{path} line {number}: id {item.id!r} repeats line {first_line[item.id]}; ids must be unique"
            )
        first_line[item.id] = number
        items.append(item)
    if not items:
        raise GoldenSetError(f"{path}: no items; expected one JSON object per line")
    return items


def write(path: Path, items: Iterable[GoldenItem]) -> int:
    """Writes the items as a golden set, one line each; returns how many."""
    lines = [json.dumps(item.to_json(), ensure_ascii=False) + "\n" for item in items]
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)


def parse_item(record: Mapping[str, Any]) -> GoldenItem:
    """One line's object as an item; ValueError saying what is wrong and what is accepted."""
    unknown = [name for name in record if name not in FIELDS]
    if unknown:
        raise ValueError(f"unknown field {', '.join(map(repr, unknown))}; the fields are {', '.join(FIELDS)}")
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise ValueError(
            f"missing {', '.join(map(repr, missing))}; every item has {', '.join(REQUIRED_FIELDS)}"
        )
    answerable = record["answerable"]
    if not isinstance(answerable, bool):
        raise ValueError(f'"answerable" must be true or false, got {answerable!r:.80}')
    namespace = require_namespace(_text(record, "namespace", None), '"namespace"')
    given = [name for name in OPTIONAL_FIELDS if name in record]
    if given and not answerable:
        raise ValueError(
            f"{', '.join(map(repr, given))} given for an unanswerable item; only answerable items"
            " have an expected answer, documents or chunks"
        )
    return GoldenItem(
        id=_text(record, "id", MAX_DOCUMENT_ID_CHARS),
        question=_text(record, "question", MAX_QUESTION_CHARS),
        namespace=namespace,
        answerable=answerable,
        expected_answer=_text(record, "expected_answer", None) if "expected_answer" in record else None,
        expected_documents=_texts(record, "expected_documents", "document ids", MAX_DOCUMENT_ID_CHARS),
        expected_chunks=_texts(record, "expected_chunks", "passages", None),
    )


def require_namespace(namespace: str, what: str) -> str:
    """namespace, when it follows the gateway's rule; ValueError naming `what` otherwise."""
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(f"{what} must be {NAMESPACE_RULE}; got {namespace!r:.80}")
    return namespace


def _text(record: Mapping[str, Any], name: str, max_chars: int | None) -> str:
    value = record[name]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'"{name}" must be a non-blank string, got {value!r:.80}')
    if max_chars is not None and len(value) > max_chars:
        raise ValueError(f'"{name}" must be at most {max_chars} characters, got {len(value)}')
    return value


def _texts(record: Mapping[str, Any], name: str, what: str, max_chars: int | None) -> tuple[str, ...] | None:
    if name not in record:
        return None
    values = record[name]
    accepted = f'"{name}" must be a non-empty list of {what} (non-blank strings, each once)'
    if not isinstance(values, list) or not values:
        raise ValueError(f"{accepted}; got {values!r:.80}")
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{accepted}; item {index} is {value!r:.80}")
        if max_chars is not None and len(value) > max_chars:
            raise ValueError(
                f'"{name}" item {index} must be at most {max_chars} characters, got {len(value)}'
            )
    if len(set(values)) != len(values):
        repeated = next(value for value in values if values.count(value) > 1)
        raise ValueError(f"{accepted}; {repeated!r:.80} is listed twice")
    return tuple(values)


def _records(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(line number, object) of each non-blank line."""
    for number, line in beir.text_lines(path, GoldenSetError):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise GoldenSetError(
                f"{path} line {number}: not valid JSON ({error.msg}); expected one object per line"
            ) from None
        if not isinstance(record, dict):
            raise GoldenSetError(
                f"{path} line {number}: expected a JSON object with {', '.join(REQUIRED_FIELDS)},"
                f" got {type(record).__name__}"
            )
        yield number, record
