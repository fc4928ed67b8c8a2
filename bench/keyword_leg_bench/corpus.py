"""SciFact's corpus, queries and train judgments, read in place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rag_cli import beir

SPLIT = "train"


@dataclass(frozen=True)
class Corpus:
    titles: dict[str, str]
    texts: dict[str, str]
    # The judged queries, in queries.jsonl order (the cached query vectors follow it).
    queries: dict[str, str]
    # query id -> {relevant document id: 1.0}: relevance is binary, any score above 0.
    qrels: dict[str, dict[str, float]]


def load_corpus(data: Path) -> Corpus:
    documents = beir.read_corpus(data / "corpus.jsonl")
    judged = beir.read_qrels(data / "qrels" / f"{SPLIT}.tsv")
    qrels = {
        query_id: relevant
        for query_id, scores in judged.items()
        if (relevant := {document_id: 1.0 for document_id, score in scores.items() if score > 0})
    }
    queries = {
        query_id: text
        for query_id, text in beir.read_queries(data / "queries.jsonl").items()
        if query_id in qrels
    }
    return Corpus(
        {document.id: document.title for document in documents},
        {document.id: document.text for document in documents},
        queries,
        qrels,
    )
