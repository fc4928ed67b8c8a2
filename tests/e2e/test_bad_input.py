"""Bad input gets INVALID_ARGUMENT with a message that says what is accepted, and
the services go on serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from rag_cli.stack import Stack
from services.common.registry import RETRIEVER
from tests.internal_calls import signed_channel


@pytest.fixture(scope="module")
def retriever(stack: Stack) -> Iterator[retriever_pb2_grpc.RetrieverServiceStub]:
    with signed_channel(stack, RETRIEVER) as channel:
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)


def _rejection(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def _search(query: str, top_k: int | None = 5, namespace: str = "docs") -> gateway_pb2.SearchRequest:
    return gateway_pb2.SearchRequest(
        namespace=namespace, query=query, retrieval=gateway_pb2.RetrievalOptions(top_k=top_k)
    )


@pytest.mark.parametrize(
    ("request_", "message_part"),
    [
        pytest.param(_search(""), "query must not be empty", id="empty query"),
        pytest.param(_search(" \t\n "), "query must not be empty", id="whitespace query"),
        pytest.param(_search("backups", top_k=0), "top_k must be 1..100, got 0", id="top_k 0"),
        pytest.param(_search("backups", top_k=-1), "top_k must be 1..100, got -1", id="negative top_k"),
        pytest.param(_search("backups", top_k=10_000), "top_k must be 1..100, got 10000", id="top_k 10000"),
        pytest.param(
            _search("backups", namespace="Team A!"), "namespace must be lower-case", id="bad namespace"
        ),
        pytest.param(_search("backups", namespace=""), "namespace must be lower-case", id="empty namespace"),
    ],
)
def test_bad_search_is_rejected(
    gateway: gateway_pb2_grpc.GatewayServiceStub, request_: gateway_pb2.SearchRequest, message_part: str
) -> None:
    error = _rejection(lambda: gateway.Search(request_))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message_part in (error.details() or "")


def test_unset_top_k_means_the_server_default(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    documents = [
        gateway_pb2.Document(id=f"d{i}", text=f"Lighthouse number {i} guides ships.") for i in range(8)
    ]
    gateway.IngestDocuments(gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=documents))

    response = gateway.Search(_search("lighthouse", top_k=None, namespace=namespace))

    assert len(response.hits) == 5


def test_empty_question_is_rejected(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    error = _rejection(lambda: gateway.Ask(gateway_pb2.AskRequest(namespace="docs", question="   ")))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "question must not be empty" in (error.details() or "")


def _ingest(namespace: str, *documents: gateway_pb2.Document) -> gateway_pb2.IngestDocumentsRequest:
    return gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=documents)


@pytest.mark.parametrize(
    ("document", "message_part"),
    [
        pytest.param(gateway_pb2.Document(id="empty", text=""), "has no text", id="empty document"),
        pytest.param(gateway_pb2.Document(id="blank", text="  \n\t "), "has no text", id="blank document"),
        pytest.param(
            gateway_pb2.Document(id="", text="Some text."), "id must not be empty or blank", id="missing id"
        ),
        pytest.param(
            gateway_pb2.Document(id="latin1", utf8_content="Grüße aus Köln".encode("latin-1")),
            "is not valid UTF-8 (byte 2)",
            id="invalid utf-8 bytes",
        ),
    ],
)
def test_bad_document_is_rejected_and_nothing_is_written(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
    document: gateway_pb2.Document,
    message_part: str,
) -> None:
    good = gateway_pb2.Document(id="good", text="A perfectly fine document about lighthouses.")

    error = _rejection(lambda: gateway.IngestDocuments(_ingest(namespace, good, document)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message_part in (error.details() or "")
    hits = gateway.Search(_search("lighthouses", namespace=namespace)).hits
    assert list(hits) == [], "a rejected request writes none of its documents"


def test_duplicate_ids_in_one_request_are_rejected(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    twice = gateway_pb2.Document(id="same", text="Text.")

    error = _rejection(lambda: gateway.IngestDocuments(_ingest(namespace, twice, twice)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "appears twice" in (error.details() or "")


def test_embedding_of_the_wrong_dimension_is_rejected_by_the_retriever(
    retriever: retriever_pb2_grpc.RetrieverServiceStub, namespace: str
) -> None:
    record = retriever_pb2.DocumentRecord(
        document_id="doc",
        content_hash="h",
        chunks=[retriever_pb2.ChunkRecord(index=0, text="Text.", embedding=[0.1] * 383)],
    )

    upsert_error = _rejection(
        lambda: retriever.Upsert(retriever_pb2.UpsertRequest(namespace=namespace, documents=[record]))
    )
    search_error = _rejection(
        lambda: retriever.Search(
            retriever_pb2.SearchRequest(namespace=namespace, query_embedding=[0.1] * 768, top_k=3)
        )
    )

    assert upsert_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must have 384 values" in (upsert_error.details() or "")
    assert "got 383" in (upsert_error.details() or "")
    assert search_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "got 768" in (search_error.details() or "")


def test_rejections_carry_a_bad_request_field_violation(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    error = _rejection(lambda: gateway.Search(_search("backups", top_k=500)))

    # A blocking stub raises an error that is also the call, with its trailing metadata.
    assert isinstance(error, grpc.Call)
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "retrieval.top_k"


def test_services_keep_serving_after_bad_input(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, stack: Stack
) -> None:
    for _ in range(3):
        _rejection(lambda: gateway.Search(_search("")))

    gateway.IngestDocuments(_ingest(namespace, gateway_pb2.Document(id="d", text="Lighthouses guide ships.")))
    hits = gateway.Search(_search("lighthouses", namespace=namespace)).hits

    assert [hit.document_id for hit in hits] == ["d"]
    for name in ("embedder", "retriever", "generator", "gateway"):
        assert stack.process(name).poll() is None, f"{name} is still running"
