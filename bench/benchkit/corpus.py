"""SciFact's corpus and claims, read in place, and the whole stack with the corpus ingested."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from benchkit.output import log
from benchkit.stack import data_directory, free_ports
from rag_cli import beir
from rag_cli.client import gateway_client
from rag_cli.eval import ingest_corpus
from rag_cli.stack import Stack

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


@contextlib.contextmanager
def stack_with_corpus(
    data_dir: Path | None, prefix: str, env: Mapping[str, str], namespace: str, corpus: Corpus
) -> Iterator[Stack]:
    """The whole stack, its data in `data_dir` (kept, so a later run ingests nothing new) or else in
    a temporary directory named `prefix`..., with `corpus` ingested into `namespace`."""
    with (
        data_directory(data_dir, prefix) as directory,
        Stack(data_dir=directory, ports=free_ports(), env=env) as stack,
    ):
        log(f"stack up in {directory}; ingesting {len(corpus.documents)} documents (unchanged ones skipped)")
        ingest(stack.gateway_target, namespace, corpus)
        yield stack
