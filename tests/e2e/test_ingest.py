"""Ingest and delete through the gateway: idempotent, replacing, clean."""

from __future__ import annotations

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from tests.conftest import sample_document
from tests.e2e.conftest import ChunkReader

CREATED, UPDATED, UNCHANGED = (
    retriever_pb2.UPSERT_STATUS_CREATED,
    retriever_pb2.UPSERT_STATUS_UPDATED,
    retriever_pb2.UPSERT_STATUS_UNCHANGED,
)


def _ingest(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, *documents: gateway_pb2.Document
) -> list[gateway_pb2.DocumentResult]:
    request = gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=documents)
    return list(gateway.IngestDocuments(request).results)


def test_reingesting_the_same_documents_duplicates_nothing(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, stored_chunks: ChunkReader
) -> None:
    documents = [sample_document("expense-policy.md"), sample_document("oncall-handbook.md")]

    first = _ingest(gateway, namespace, *documents)
    chunks_after_first = stored_chunks(namespace)
    second = _ingest(gateway, namespace, *documents)

    assert [r.status for r in first] == [CREATED, CREATED]
    assert [r.status for r in second] == [UNCHANGED, UNCHANGED]
    assert [r.chunk_count for r in second] == [r.chunk_count for r in first]
    assert stored_chunks(namespace) == chunks_after_first
    assert sum(len(c) for c in chunks_after_first.values()) == sum(r.chunk_count for r in first)


def test_a_changed_document_replaces_its_old_chunks(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, stored_chunks: ChunkReader
) -> None:
    _ingest(
        gateway, namespace, gateway_pb2.Document(id="note", text="The office plant is watered on Fridays.")
    )
    results = _ingest(
        gateway,
        namespace,
        gateway_pb2.Document(id="note", text="The office cactus needs water once a month."),
    )

    assert results[0].status == UPDATED
    assert stored_chunks(namespace) == {"note": ["The office cactus needs water once a month."]}


def test_delete_removes_the_document_and_its_chunks(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, stored_chunks: ChunkReader
) -> None:
    _ingest(gateway, namespace, sample_document("expense-policy.md"), sample_document("oncall-handbook.md"))

    deleted = gateway.DeleteDocuments(
        gateway_pb2.DeleteDocumentsRequest(namespace=namespace, document_ids=["expense-policy.md"])
    )

    assert deleted.deleted_documents == 1
    assert deleted.deleted_chunks > 0
    assert set(stored_chunks(namespace)) == {"oncall-handbook.md"}


def test_raw_utf8_bytes_are_accepted(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str) -> None:
    content = "Die Kaffeemaschine steht im dritten Stock neben der Küche.".encode()

    results = _ingest(gateway, namespace, gateway_pb2.Document(id="kaffee", utf8_content=content))

    assert results[0].status == CREATED
    assert results[0].chunk_count == 1
