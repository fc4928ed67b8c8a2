"""RagClient: the gateway's eight RPCs as blocking Python calls.

Each method takes the namespace first and the request's options as keyword
arguments (the generated messages: RetrievalOptions, GenerationOptions, ...),
and returns the gateway's response message. A failed call raises RagError
(rag_client.errors); nothing else of gRPC reaches the caller.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TypeVar

import grpc

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2
from rag.retriever.v1 import retriever_pb2
from rag_client import _requests
from rag_client.channel import DEFAULT_RETRY, DEFAULT_TIMEOUT_S, RetryPolicy, Tls, connection
from rag_client.errors import RagError

Request = TypeVar("Request")
Response = TypeVar("Response")


class RagClient:
    """A blocking client of the gateway; one channel, safe to share between threads.

    target: a gRPC target ("host:port", "dns:///name:port", "unix:path", ...).
    api_key: sent with every call as 'authorization: Bearer <key>'; refused
    (PlaintextKeyRefused) over plaintext to a target off this machine unless
    allow_plaintext_key. tls: None for plaintext. timeout_s: the deadline in
    seconds of each call that gives none (None: no deadline). retry: how
    UNAVAILABLE is retried (None: not at all).
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: Tls | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        allow_plaintext_key: bool = False,
    ) -> None:
        self._connection = connection(
            target, api_key=api_key, tls=tls, retry=retry, allow_plaintext_key=allow_plaintext_key
        )
        self._timeout_s = timeout_s
        options = self._connection.options
        credentials = self._connection.credentials
        self._channel = (
            grpc.insecure_channel(target, options=options)
            if credentials is None
            else grpc.secure_channel(target, credentials, options=options)
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    def __enter__(self) -> RagClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def ask(
        self,
        namespace: str,
        question: str,
        *,
        retrieval: gateway_pb2.RetrievalOptions | None = None,
        generation: generator_pb2.GenerationOptions | None = None,
        history: Sequence[common_pb2.ChatTurn] = (),
        skip_cache: bool = False,
        timeout_s: float | None = None,
    ) -> gateway_pb2.AskResponse:
        """The answer to a question from the namespace's documents, with its numbered sources."""
        request = _requests.ask(namespace, question, retrieval, generation, history, skip_cache)
        return self._unary(self._stub.Ask, request, timeout_s)

    def ask_stream(
        self,
        namespace: str,
        question: str,
        *,
        retrieval: gateway_pb2.RetrievalOptions | None = None,
        generation: generator_pb2.GenerationOptions | None = None,
        history: Sequence[common_pb2.ChatTurn] = (),
        skip_cache: bool = False,
        timeout_s: float | None = None,
    ) -> Generator[gateway_pb2.AskStreamResponse, None, None]:
        """Events as they come: the sources, answer deltas, then the final answer.

        The call starts at the first event read; closing the iterator (or leaving
        a loop over it) cancels it. The deadline covers the whole stream.
        """
        request = _requests.ask(namespace, question, retrieval, generation, history, skip_cache)
        call = self._stub.AskStream(
            gateway_pb2.AskStreamRequest(request=request),
            timeout=self._deadline(timeout_s),
            metadata=self._connection.metadata,
        )
        try:
            yield from call
        except grpc.RpcError as error:
            raise RagError.from_rpc_error(error) from error
        finally:
            call.cancel()  # nothing once the stream has ended; stops it when the caller stopped reading

    def search(
        self,
        namespace: str,
        query: str,
        *,
        retrieval: gateway_pb2.RetrievalOptions | None = None,
        timeout_s: float | None = None,
    ) -> gateway_pb2.SearchResponse:
        """Retrieval only: the best-matching chunks."""
        return self._unary(self._stub.Search, _requests.search(namespace, query, retrieval), timeout_s)

    def ingest_documents(
        self,
        namespace: str,
        documents: Iterable[gateway_pb2.Document],
        *,
        chunking: gateway_pb2.ChunkingOptions | None = None,
        timeout_s: float | None = None,
    ) -> gateway_pb2.IngestDocumentsResponse:
        """Stores documents (rag_client.documents makes them); one result per document, in order.

        A document that cannot be stored is a result with status UPSERT_STATUS_FAILED
        and its error, not an exception: the others are stored.
        """
        request = _requests.ingest(namespace, documents, chunking)
        return self._unary(self._stub.IngestDocuments, request, timeout_s)

    def delete_documents(
        self,
        namespace: str,
        document_ids: Iterable[str] = (),
        *,
        metadata_filter: common_pb2.MetadataFilter | None = None,
        timeout_s: float | None = None,
    ) -> gateway_pb2.DeleteDocumentsResponse:
        """Deletes the documents named, and those whose metadata matches the filter."""
        request = _requests.delete(namespace, document_ids, metadata_filter)
        return self._unary(self._stub.DeleteDocuments, request, timeout_s)

    def list_documents(
        self,
        namespace: str,
        *,
        state: retriever_pb2.DocumentState.ValueType = retriever_pb2.DOCUMENT_STATE_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> gateway_pb2.ListDocumentsResponse:
        """One page of the namespace's documents; next_page_token is "" on the last one."""
        request = _requests.list_page(namespace, state, page_size, page_token)
        return self._unary(self._stub.ListDocuments, request, timeout_s)

    def iter_documents(
        self,
        namespace: str,
        *,
        state: retriever_pb2.DocumentState.ValueType = retriever_pb2.DOCUMENT_STATE_UNSPECIFIED,
        page_size: int = 0,
        timeout_s: float | None = None,
    ) -> Iterator[retriever_pb2.DocumentInfo]:
        """Every document of the namespace, page after page (timeout_s is per page)."""
        page_token = ""
        while True:
            page = self.list_documents(
                namespace, state=state, page_size=page_size, page_token=page_token, timeout_s=timeout_s
            )
            yield from page.documents
            if not (page_token := page.next_page_token):
                return

    def submit_feedback(
        self,
        namespace: str,
        question: str,
        items: Iterable[retriever_pb2.FeedbackItem],
        *,
        answer_rating: retriever_pb2.AnswerRating.ValueType | None = None,
        timeout_s: float | None = None,
    ) -> gateway_pb2.SubmitFeedbackResponse:
        """Records which search hits of a question were relevant (document id and chunk index as the
        hit gives them), and optionally a rating of its answer; stored whole or not at all."""
        request = _requests.submit_feedback(namespace, question, items, answer_rating)
        return self._unary(self._stub.SubmitFeedback, request, timeout_s)

    def list_feedback(
        self, namespace: str, *, page_size: int = 0, page_token: str = "", timeout_s: float | None = None
    ) -> gateway_pb2.ListFeedbackResponse:
        """One page of the namespace's feedback, oldest first; next_page_token is "" on the last one."""
        request = _requests.list_feedback_page(namespace, page_size, page_token)
        return self._unary(self._stub.ListFeedback, request, timeout_s)

    def iter_feedback(
        self, namespace: str, *, page_size: int = 0, timeout_s: float | None = None
    ) -> Iterator[retriever_pb2.Feedback]:
        """Every feedback of the namespace, oldest first, page after page (timeout_s is per page)."""
        page_token = ""
        while True:
            page = self.list_feedback(
                namespace, page_size=page_size, page_token=page_token, timeout_s=timeout_s
            )
            yield from page.feedback
            if not (page_token := page.next_page_token):
                return

    def _deadline(self, timeout_s: float | None) -> float | None:
        return self._timeout_s if timeout_s is None else timeout_s

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout_s: float | None,
    ) -> Response:
        try:
            return method(request, timeout=self._deadline(timeout_s), metadata=self._connection.metadata)
        except grpc.RpcError as error:
            raise RagError.from_rpc_error(error) from error
