"""SciFact's corpus and claims, read in place, and the corpus ingested through the gateway."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rag_cli import beir
from rag_cli.client import gateway_client
from rag_cli.eval import ingest_corpus

INGEST_BATCH = 32


@dataclass(frozen=True)
class Corpus:
    documents: list[beir.CorpusDocument]
    # Every claim of queries.jsonl, train and test alike: only their text is used, as search load.
    queries: list[str]


def load_corpus(data: Path, documents: int | None) -> Corpus:
    corpus = beir.read_corpus(data / "corpus.jsonl")
    queries = list(beir.read_queries(data / "queries.jsonl").values())
    return Corpus(corpus[:documents] if documents else corpus, queries)


def ingest(gateway_target: str, namespace: str, corpus: Corpus) -> int:
    """Ingests the corpus (unchanged documents are skipped: a reused data directory costs seconds);
    returns the index version after it."""
    with gateway_client(gateway_target, tls=None, api_key=None, timeout_s=600) as gateway:
        return ingest_corpus(gateway, namespace, corpus.documents, INGEST_BATCH).index_version
