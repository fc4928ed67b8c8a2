"""The gateway's request messages, built once for the sync and the asyncio client alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2
from rag.retriever.v1 import retriever_pb2


def ask(
    namespace: str,
    question: str,
    retrieval: gateway_pb2.RetrievalOptions | None,
    generation: generator_pb2.GenerationOptions | None,
    history: Sequence[common_pb2.ChatTurn],
    skip_cache: bool,
) -> gateway_pb2.AskRequest:
    return gateway_pb2.AskRequest(
        namespace=namespace,
        question=question,
        retrieval=retrieval,
        generation=generation,
        history=history,
        skip_cache=skip_cache,
    )


def search(
    namespace: str, query: str, retrieval: gateway_pb2.RetrievalOptions | None
) -> gateway_pb2.SearchRequest:
    return gateway_pb2.SearchRequest(namespace=namespace, query=query, retrieval=retrieval)


def ingest(
    namespace: str, documents: Iterable[gateway_pb2.Document], chunking: gateway_pb2.ChunkingOptions | None
) -> gateway_pb2.IngestDocumentsRequest:
    return gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=documents, chunking=chunking)


def delete(
    namespace: str, document_ids: Iterable[str], metadata_filter: common_pb2.MetadataFilter | None
) -> gateway_pb2.DeleteDocumentsRequest:
    return gateway_pb2.DeleteDocumentsRequest(
        namespace=namespace, document_ids=document_ids, filter=metadata_filter
    )


def list_page(
    namespace: str, state: retriever_pb2.DocumentState.ValueType, page_size: int, page_token: str
) -> gateway_pb2.ListDocumentsRequest:
    return gateway_pb2.ListDocumentsRequest(
        namespace=namespace, state=state, page_size=page_size, page_token=page_token
    )


def submit_feedback(
    namespace: str,
    question: str,
    items: Iterable[retriever_pb2.FeedbackItem],
    answer_rating: retriever_pb2.AnswerRating.ValueType | None,
) -> gateway_pb2.SubmitFeedbackRequest:
    return gateway_pb2.SubmitFeedbackRequest(
        namespace=namespace, question=question, items=items, answer_rating=answer_rating
    )


def list_feedback_page(namespace: str, page_size: int, page_token: str) -> gateway_pb2.ListFeedbackRequest:
    return gateway_pb2.ListFeedbackRequest(namespace=namespace, page_size=page_size, page_token=page_token)
