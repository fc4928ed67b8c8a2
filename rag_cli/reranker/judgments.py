"""What a reranker is trained and validated on: queries with judged documents, and their candidates.

Judgments come from a BEIR folder (qrels) or from a namespace's feedback;
either way they become `JudgedQuery`s. The candidates for each query are what
the platform's own hybrid search returns for it, through the gateway, in fused
order: the reranker will only ever see such candidates, so it learns from them.
The top-ranked candidates not judged relevant are the hard negatives.

A relevance judgment is per document (BEIR) or per chunk (feedback). A chunk is
a positive when its document is relevant and, for chunk-level judgments, when
that chunk itself was judged relevant.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from rag_cli import beir
from rag_cli import eval as evaluation
from rag_client import RagClient
from services.retriever.rerank_text import passage_text


@dataclass(frozen=True)
class JudgedQuery:
    id: str
    text: str
    # Document id -> graded gain; above 0 is relevant, 0 judged not relevant.
    gains: Mapping[str, int]
    # (document id, chunk index) judged relevant, when judgments are per chunk; None when per document.
    relevant_chunks: frozenset[tuple[str, int]] | None = None

    def is_positive(self, candidate: Candidate) -> bool:
        if self.gains.get(candidate.document_id, 0) <= 0:
            return False
        if self.relevant_chunks is None:
            return True
        return (candidate.document_id, candidate.chunk_index) in self.relevant_chunks


@dataclass(frozen=True)
class Candidate:
    """One hit of the fused search, as the reranker reads it."""

    document_id: str
    chunk_index: int
    passage: str


@dataclass(frozen=True)
class Source:
    """Judged queries and the namespace that holds their documents."""

    description: str
    namespace: str
    queries: list[JudgedQuery]
    # Searches read at least this version: the data the judgments are about.
    index_version: int


# Documents per IngestDocuments call when a BEIR corpus is ingested.
INGEST_BATCH = 64


def from_beir(gateway: RagClient, folder: Path, split: str, namespace: str | None) -> Source:
    """A BEIR split's judged queries, its corpus ingested (unchanged documents cost nothing) as `rag eval`
    does, into `namespace` or eval-<folder name>."""
    dataset = beir.load(folder, split)
    if not dataset.queries:
        raise beir.DatasetError(f"{folder}: no query in split {split!r} has a relevant document")
    namespace = namespace or evaluation.default_namespace(folder)
    ingested = evaluation.ingest_corpus(gateway, namespace, dataset.corpus, INGEST_BATCH)
    queries = [JudgedQuery(query.id, query.text, query.gains) for query in dataset.queries]
    return Source(f"BEIR {dataset.name}, split {split}", namespace, queries, ingested.index_version)


def from_feedback(gateway: RagClient, namespace: str) -> Source:
    """The namespace's feedback as judged queries, per chunk; judgments of documents no longer stored
    are skipped, and so is a question left with no relevant chunk."""
    from rag_cli.feedback import feedback_judgments

    judged = feedback_judgments(gateway.iter_feedback(namespace, page_size=1000))
    stored = {
        document.document_id
        for document in gateway.iter_documents(namespace, page_size=1000)
        if document.chunk_count > 0
    }
    queries = []
    for query_id, question in judged.queries.items():
        gains = {document: gain for document, gain in judged.qrels[query_id].items() if document in stored}
        chunks = frozenset(c for c in judged.relevant_chunks.get(query_id, ()) if c[0] in stored)
        if chunks:
            queries.append(JudgedQuery(query_id, question, gains, chunks))
    if not queries:
        raise ValueError(
            f"no feedback in {namespace!r} judges a stored chunk relevant;"
            " submit some with `rag feedback submit`"
        )
    skipped = len(judged.queries) - len(queries)
    description = f"feedback of namespace {namespace}" + (
        f" ({skipped} questions without a relevant stored chunk skipped)" if skipped else ""
    )
    # The judged chunks are stored already: any version holds them.
    return Source(description, namespace, queries, index_version=0)


@dataclass(frozen=True)
class Split:
    train: list[JudgedQuery]
    validation: list[JudgedQuery]


def split_queries(queries: Sequence[JudgedQuery], validation_share: float, seed: int) -> Split:
    """A fixed share of the queries kept back for validation, chosen by the seed; never trained on.

    Split by query, not by pair: a validation query's candidates never reach training.
    """
    if not 0 < validation_share < 1:
        raise ValueError(f"the validation share must be between 0 and 1, got {validation_share}")
    shuffled = sorted(queries, key=lambda query: query.id)
    random.Random(seed).shuffle(shuffled)
    held_back = max(1, round(len(shuffled) * validation_share))
    if held_back >= len(shuffled):
        raise ValueError(f"{len(shuffled)} judged queries are too few to keep a validation share back")
    return Split(train=shuffled[held_back:], validation=shuffled[:held_back])


def fused_candidates(
    gateway: RagClient,
    namespace: str,
    queries: Iterable[JudgedQuery],
    depth: int,
    min_index_version: int,
    on_searched: Callable[[], object] = lambda: None,
) -> dict[str, list[Candidate]]:
    """Query id -> its hybrid search's top `depth` chunks in fused order, with any rerank stage off."""
    retrieval = gateway_pb2.RetrievalOptions(
        top_k=depth,
        mode=common_pb2.SEARCH_MODE_HYBRID,
        rerank=common_pb2.RerankParams(enabled=False),
        min_index_version=min_index_version,
    )
    found: dict[str, list[Candidate]] = {}
    for query in queries:
        response = gateway.search(namespace, query.text, retrieval=retrieval)
        found[query.id] = [
            Candidate(hit.document_id, hit.chunk_index, passage_text(hit.title, hit.text))
            for hit in response.hits
        ]
        on_searched()
    return found


@dataclass(frozen=True)
class Pair:
    query: str
    passage: str
    label: float


# Negatives past this many candidates count as easy: far down the fused order.
EASY_NEGATIVES_FROM = 30


def training_pairs(
    queries: Iterable[JudgedQuery],
    candidates: Mapping[str, Sequence[Candidate]],
    negatives_per_query: int,
    seed: int,
) -> list[Pair]:
    """Every positive among each query's candidates, and `negatives_per_query` negatives: half the
    best-ranked ones (hard), half drawn by the seed from beyond EASY_NEGATIVES_FROM (easy).

    Hard negatives alone look so much like the positives that a fresh head
    learns from them slowly, if at all; easy ones teach relevance first. A
    query none of whose candidates is a positive gives nothing: its negatives
    alone would teach the model only what is wrong for it.
    """
    draw = random.Random(seed)
    pairs: list[Pair] = []
    for query in queries:
        found = candidates.get(query.id, [])
        positives = [c for c in found if query.is_positive(c)]
        if not positives:
            continue
        negatives = [c for c in found if not query.is_positive(c)]
        hard = negatives[: (negatives_per_query + 1) // 2]
        far = [c for c in negatives[EASY_NEGATIVES_FROM:] if c not in hard]
        easy = draw.sample(far, min(len(far), negatives_per_query - len(hard)))
        pairs += [Pair(query.text, c.passage, 1.0) for c in positives]
        pairs += [Pair(query.text, c.passage, 0.0) for c in [*hard, *easy]]
    return pairs
