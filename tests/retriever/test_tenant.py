"""The retriever's tenant check: a call signed for some namespaces touches no other.

The gateway signs the namespaces it authorized a call for into the call's token;
every RPC refuses any other namespace with PERMISSION_DENIED, and a call without
a valid token with UNAUTHENTICATED, before it reads or writes anything. The
plain tenant header of earlier versions vouches for nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeAlias

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message

from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.deferred import Deferred
from services.common.internal_auth import MISSING_TOKEN
from services.common.registry import RETRIEVER
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput, DocumentState
from tests.retriever.conftest import DIMENSION
from tests.retriever.serving import SIGNER, refusal, retriever_target

# Only the stubs' type hints know the async stub; at run time it is the plain one.
Stub: TypeAlias = "retriever_pb2_grpc.RetrieverServiceAsyncStub"
Metadata: TypeAlias = tuple[tuple[str, str], ...]
# One call of one RPC in a namespace, with the given metadata.
Call = Callable[[Stub, str, Metadata], Awaitable[object]]

rng = np.random.default_rng(20240620)


def _upsert(retriever: Stub, namespace: str, metadata: Metadata) -> Awaitable[object]:
    chunk = retriever_pb2.ChunkRecord(
        text="whales", embedding=rng.standard_normal(DIMENSION).tolist(), end_char=6
    )
    record = retriever_pb2.DocumentRecord(document_id="new", content_hash="h", chunks=[chunk])
    return retriever.Upsert(
        retriever_pb2.UpsertRequest(namespace=namespace, documents=[record]), metadata=metadata
    )


def _get_document_hashes(retriever: Stub, namespace: str, metadata: Metadata) -> Awaitable[object]:
    request = retriever_pb2.GetDocumentHashesRequest(namespace=namespace, document_ids=["kept"])
    return retriever.GetDocumentHashes(request, metadata=metadata)


def _record_failures(retriever: Stub, namespace: str, metadata: Metadata) -> Awaitable[object]:
    failed = retriever_pb2.FailedDocument(document_id="kept", reason="not a PDF")
    request = retriever_pb2.RecordFailuresRequest(namespace=namespace, documents=[failed])
    return retriever.RecordFailures(request, metadata=metadata)


def _search(retriever: Stub, namespace: str, metadata: Metadata) -> Awaitable[object]:
    request = retriever_pb2.SearchRequest(
        namespace=namespace, query_text="whales", top_k=1, mode=common_pb2.SEARCH_MODE_KEYWORD
    )
    return retriever.Search(request, metadata=metadata)


def _delete(retriever: Stub, namespace: str, metadata: Metadata) -> Awaitable[object]:
    request = retriever_pb2.DeleteRequest(namespace=namespace, document_ids=["kept"])
    return retriever.Delete(request, metadata=metadata)


def _list_documents(retriever: Stub, namespace: str, metadata: Metadata) -> Awaitable[object]:
    return retriever.ListDocuments(retriever_pb2.ListDocumentsRequest(namespace=namespace), metadata=metadata)


def _get_index_version(retriever: Stub, namespace: str, metadata: Metadata) -> Awaitable[object]:
    request = retriever_pb2.GetIndexVersionRequest(namespace=namespace)
    return retriever.GetIndexVersion(request, metadata=metadata)


def _submit_feedback(retriever: Stub, namespace: str, metadata: Metadata) -> Awaitable[object]:
    item = retriever_pb2.FeedbackItem(
        document_id="kept", chunk_index=0, label=retriever_pb2.FEEDBACK_LABEL_RELEVANT
    )
    request = retriever_pb2.SubmitFeedbackRequest(namespace=namespace, question="whales?", items=[item])
    return retriever.SubmitFeedback(request, metadata=metadata)


def _list_feedback(retriever: Stub, namespace: str, metadata: Metadata) -> Awaitable[object]:
    return retriever.ListFeedback(retriever_pb2.ListFeedbackRequest(namespace=namespace), metadata=metadata)


CALLS: dict[str, Call] = {
    "Upsert": _upsert,
    "GetDocumentHashes": _get_document_hashes,
    "RecordFailures": _record_failures,
    "Search": _search,
    "Delete": _delete,
    "ListDocuments": _list_documents,
    "GetIndexVersion": _get_index_version,
    "SubmitFeedback": _submit_feedback,
    "ListFeedback": _list_feedback,
}


_METHODS = retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"].methods_by_name


def test_every_rpc_is_covered() -> None:
    assert set(CALLS) == set(_METHODS)


@pytest.fixture
async def retriever(store: ChunkStore, namespace: str) -> AsyncIterator[Stub]:
    """The retriever, with one document "kept" in `namespace`; its calls carry only the metadata given."""
    text = "whales"
    kept = DocumentInput(
        "kept", "h", "", {}, [ChunkInput(0, text, rng.standard_normal(DIMENSION), 0, len(text))]
    )
    await store.upsert(namespace, [kept])
    deferred: Deferred[ChunkStore] = Deferred("the store")
    deferred.resolve(store)
    async with (
        retriever_target(RetrieverServicer(deferred)) as target,
        grpc.aio.insecure_channel(target) as channel,
    ):
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)


def _signed_for(*namespaces: str) -> Metadata:
    return SIGNER.metadata(RETRIEVER.name, namespaces=namespaces)


async def _snapshot(store: ChunkStore, namespace: str) -> tuple[object, ...]:
    listed = await store.list_documents(namespace, state=DocumentState.ALL)
    feedback = await store.list_feedback(namespace)
    return await store.index_version(namespace), listed.documents, feedback.feedback


@pytest.mark.parametrize("rpc", list(CALLS))
async def test_a_namespace_outside_the_token_is_refused_and_left_alone(
    retriever: Stub, store: ChunkStore, namespace: str, rpc: str
) -> None:
    other = f"{namespace}-other"
    await store.upsert(
        other, [DocumentInput("kept", "h", "", {}, [ChunkInput(0, "whales", np.ones(DIMENSION), 0, 6)])]
    )
    before = await _snapshot(store, other)

    error = await refusal(
        CALLS[rpc](retriever, other, _signed_for(f"{namespace}-third", namespace)),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    assert repr(other) in (error.details() or "")
    assert await _snapshot(store, other) == before


@pytest.mark.parametrize("rpc", list(CALLS))
async def test_a_call_without_a_token_is_refused_whatever_header_it_sends(
    retriever: Stub, store: ChunkStore, namespace: str, rpc: str
) -> None:
    before = await _snapshot(store, namespace)
    forged = (("x-rag-tenant-namespaces", namespace),)

    error = await refusal(CALLS[rpc](retriever, namespace, forged), grpc.StatusCode.UNAUTHENTICATED)

    assert error.details() == MISSING_TOKEN
    assert await _snapshot(store, namespace) == before


async def test_a_token_for_no_namespace_opens_none(retriever: Stub, namespace: str) -> None:
    await refusal(_list_documents(retriever, namespace, _signed_for()), grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.parametrize("rpc", list(CALLS))
async def test_a_call_signed_for_its_namespace_is_served(retriever: Stub, namespace: str, rpc: str) -> None:
    response = await CALLS[rpc](retriever, namespace, _signed_for(f"{namespace}-third", namespace))

    assert isinstance(response, Message)
    assert response.DESCRIPTOR.full_name == _METHODS[rpc].output_type.full_name
