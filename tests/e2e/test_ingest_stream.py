"""Ingest of many documents at once: chunks embedded through one stream of batches,
each document upserted whole as soon as its chunks are embedded."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from rag.common.v1 import common_pb2
from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from rag_cli.stack import Stack
from services.common.registry import EMBEDDER
from tests.conftest import SAMPLES
from tests.e2e.conftest import ChunkReader
from tests.internal_calls import signed_channel

CREATED, UNCHANGED = retriever_pb2.UPSERT_STATUS_CREATED, retriever_pb2.UPSERT_STATUS_UNCHANGED
# Small chunks, so 40 documents of about 1,000 tokens make some 700 chunks:
# a dozen batches of the gateway's 64, many documents straddling two batches.
CHUNKING = gateway_pb2.ChunkingOptions(max_tokens=64, overlap_tokens=0)
DOCUMENTS = 40
LIGHTHOUSE = "The keeper of the Skerryvore lighthouse tests the fog signal every Tuesday at dawn."


@pytest.fixture(scope="module")
def embedder(stack: Stack) -> Iterator[embedder_pb2_grpc.EmbedderServiceStub]:
    with signed_channel(stack, EMBEDDER) as channel:
        yield embedder_pb2_grpc.EmbedderServiceStub(channel)


def _documents() -> list[gateway_pb2.Document]:
    """Distinct documents from the samples: each rotates a sample's paragraphs its own way;
    the last one alone mentions the lighthouse."""
    samples = [path.read_text() for path in sorted(SAMPLES.iterdir())]
    documents = []
    for number in range(DOCUMENTS):
        paragraphs = samples[number % len(samples)].split("\n\n")
        shift = number % len(paragraphs)
        text = "\n\n".join([f"Archive record {number}.", *paragraphs[shift:], *paragraphs[:shift]])
        if number == DOCUMENTS - 1:
            text += f"\n\n{LIGHTHOUSE}"
        documents.append(gateway_pb2.Document(id=f"record-{number:02d}", text=text))
    return documents


@dataclass(frozen=True)
class Archive:
    """The test's namespace, written through the gateway with the test's chunking, next to
    what the embedder makes of a text and what the chunk table holds."""

    gateway: gateway_pb2_grpc.GatewayServiceStub
    embedder: embedder_pb2_grpc.EmbedderServiceStub
    namespace: str
    stored_chunks: ChunkReader

    def chunk_texts(self, text: str) -> list[str]:
        """The chunks the embedder makes of a text with the test's chunking: what ingest must store."""
        request = embedder_pb2.ChunkRequest(
            text=text, max_tokens=CHUNKING.max_tokens, overlap_tokens=CHUNKING.overlap_tokens
        )
        return [chunk.text for chunk in self.embedder.Chunk(request).chunks]

    def ingest(self, documents: list[gateway_pb2.Document]) -> gateway_pb2.IngestDocumentsResponse:
        return self.gateway.IngestDocuments(
            gateway_pb2.IngestDocumentsRequest(
                namespace=self.namespace, documents=documents, chunking=CHUNKING
            )
        )

    def stored(self) -> dict[str, list[str]]:
        return self.stored_chunks(self.namespace)

    def dense_top_hit(self, query: str) -> retriever_pb2.SearchHit:
        response = self.gateway.Search(
            gateway_pb2.SearchRequest(
                namespace=self.namespace,
                query=query,
                retrieval=gateway_pb2.RetrievalOptions(top_k=1, mode=common_pb2.SEARCH_MODE_DENSE),
            )
        )
        return response.hits[0]


@pytest.fixture
def archive(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    embedder: embedder_pb2_grpc.EmbedderServiceStub,
    namespace: str,
    stored_chunks: ChunkReader,
) -> Archive:
    return Archive(gateway, embedder, namespace, stored_chunks)


def test_many_documents_are_stored_whole_and_findable(archive: Archive) -> None:
    documents = _documents()
    expected = {document.id: archive.chunk_texts(document.text) for document in documents}
    assert sum(len(chunks) for chunks in expected.values()) > 8 * 64, "enough chunks for many batches"

    first = archive.ingest(documents)
    second = archive.ingest(documents)

    assert [r.document_id for r in first.results] == [d.id for d in documents], "results in request order"
    assert [r.status for r in first.results] == [CREATED] * DOCUMENTS
    assert [r.chunk_count for r in first.results] == [len(expected[d.id]) for d in documents]
    assert archive.stored() == expected
    assert {t.stage for t in first.timings} >= {"chunk", "embed", "upsert"}
    assert [r.status for r in second.results] == [UNCHANGED] * DOCUMENTS
    assert [r.chunk_count for r in second.results] == [r.chunk_count for r in first.results]

    # Each chunk got its own embedding, not a neighbour's: searching with a
    # chunk's exact text finds that very chunk first.
    last = documents[-1].id
    lighthouse_chunk = next(text for text in expected[last] if LIGHTHOUSE in text)
    hit = archive.dense_top_hit(lighthouse_chunk)
    assert (hit.document_id, hit.chunk_index) == (last, expected[last].index(lighthouse_chunk))
    middle = expected[documents[DOCUMENTS // 2].id]
    assert archive.dense_top_hit(middle[len(middle) // 2]).text == middle[len(middle) // 2]


def test_an_embedding_failure_mid_ingest_leaves_only_whole_documents(archive: Archive) -> None:
    documents = _documents()
    # Two short sentences apart by a long run of spaces are one chunk of a few
    # tokens but over 100,000 characters, more than the embedder accepts per
    # text: its batch, two thirds into the stream, fails with INVALID_ARGUMENT.
    failing = 2 * DOCUMENTS // 3
    documents[failing] = gateway_pb2.Document(
        id=documents[failing].id, text="Bollards were inspected." + " " * 120_000 + "None were loose."
    )
    assert len(archive.chunk_texts(documents[failing].text)) == 1

    with pytest.raises(grpc.RpcError) as raised:
        archive.ingest(documents)
    details = raised.value.details() or ""

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "embedder" in details
    assert "100000 characters" in details
    stored = archive.stored()
    position = {document.id: index for index, document in enumerate(documents)}
    assert all(position[document_id] < failing for document_id in stored), (
        "no document from the failed batch on is stored: answers come in order, and the stream stopped"
    )
    for document_id, chunks in stored.items():
        assert chunks == archive.chunk_texts(documents[position[document_id]].text), (
            f"{document_id} is stored whole"
        )

    # Without the bad document, a retry stores the rest and skips what is already
    # whole: exactly what was stored when the error came back, as nothing of the
    # failed ingest is still being written after it answers.
    del documents[failing]
    retried = archive.ingest(documents)

    assert {r.document_id for r in retried.results if r.status == UNCHANGED} == set(stored)
    assert {r.status for r in retried.results} <= {CREATED, UNCHANGED}
    assert set(archive.stored()) == {document.id for document in documents}
