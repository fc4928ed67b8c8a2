"""Reads a retrieval test collection in the BEIR layout.

    corpus.jsonl        {"_id": ..., "title": ..., "text": ...} per line
    queries.jsonl       {"_id": ..., "text": ...} per line
    qrels/<split>.tsv   query-id <TAB> corpus-id <TAB> score, after a header line

A judgment with a score above 0 marks a relevant document; the score is its
graded gain. Any problem raises DatasetError naming the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """The dataset folder is missing a file or holds a line that cannot be read."""


@dataclass(frozen=True)
class CorpusDocument:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    # Judged document id -> score; every query here has at least one score above 0.
    gains: dict[str, int]


@dataclass(frozen=True)
class Dataset:
    name: str
    split: str
    corpus: list[CorpusDocument]
    # Queries with at least one relevant judgment in the split, in qrels order.
    queries: list[Query]
    # Queries judged in the split with no score above 0: they are not run.
    unjudged_queries: int


def load(folder: Path, split: str) -> Dataset:
    qrels = read_qrels(_qrels_path(folder, split))
    texts = read_queries(folder / "queries.jsonl")
    queries: list[Query] = []
    for query_id, gains in qrels.items():
        if query_id not in texts:
            raise DatasetError(
                f"{folder / 'qrels' / f'{split}.tsv'}: query {query_id!r} is judged but not in queries.jsonl"
            )
        if any(score > 0 for score in gains.values()):
            queries.append(Query(query_id, texts[query_id], gains))
    return Dataset(
        name=folder.resolve().name,
        split=split,
        corpus=read_corpus(folder / "corpus.jsonl"),
        queries=queries,
        unjudged_queries=len(qrels) - len(queries),
    )


def _qrels_path(folder: Path, split: str) -> Path:
    path = folder / "qrels" / f"{split}.tsv"
    if not path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        hint = f"; splits found: {', '.join(available)}" if available else ""
        raise DatasetError(f"{path}: no such file{hint}")
    return path


def read_corpus(path: Path) -> list[CorpusDocument]:
    documents: list[CorpusDocument] = []
    first_line: dict[str, int] = {}
    for number, record in _json_lines(path):
        document = CorpusDocument(
            id=_id(record, path, number),
            title=_string(record, "title", path, number, required=False),
            text=_string(record, "text", path, number, required=True),
        )
        if document.id in first_line:
            raise DatasetError(
                f"{path} line {number}: _id {document.id!r} repeats line {first_line[document.id]}"
            )
        first_line[document.id] = number
        documents.append(document)
    return documents


def read_queries(path: Path) -> dict[str, str]:
    queries: dict[str, str] = {}
    for number, record in _json_lines(path):
        text = _string(record, "text", path, number, required=True)
        if not text.strip():
            raise DatasetError(f'{path} line {number}: "text" must not be blank')
        queries[_id(record, path, number)] = text
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """query id -> {corpus id: score}, skipping the header line."""
    qrels: dict[str, dict[str, int]] = {}
    for index, (number, line) in enumerate(text_lines(path)):
        fields = line.rstrip("\r\n").split("\t")
        if index == 0 and not _is_int(fields[-1]):
            continue  # the header: query-id, corpus-id, score
        if len(fields) != 3 or not fields[0] or not fields[1] or not _is_int(fields[2]):
            raise DatasetError(
                f"{path} line {number}: expected query-id<TAB>corpus-id<TAB>integer score, got {line!r:.80}"
            )
        qrels.setdefault(fields[0], {})[fields[1]] = int(fields[2])
    return qrels


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def text_lines(path: Path, error_type: type[Exception] = DatasetError) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, decoded as UTF-8 (a BOM on the first line is
    dropped); a missing file or bytes that are not UTF-8 raise `error_type` naming the line."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        raise error_type(f"{path}: no such file") from None
    with file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise error_type(f"{path} line {number}: not UTF-8 ({error.reason})") from None
            if line.strip():
                yield number, line


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in text_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path} line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _id(record: dict[str, Any], path: Path, number: int) -> str:
    value = record.get("_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise DatasetError(f'{path} line {number}: "_id" must be a non-empty string, got {value!r:.80}')
    return value


def _string(record: dict[str, Any], key: str, path: Path, number: int, *, required: bool) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DatasetError(f'{path} line {number}: "{key}" must be a string, got {value!r:.80}')
    return value
