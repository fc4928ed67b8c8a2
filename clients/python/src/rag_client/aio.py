"""AsyncRagClient: RagClient's methods as coroutines, on a grpc.aio channel.

Same arguments, same results, same RagError as RagClient (rag_client.client);
make it inside the event loop that uses it (`async with AsyncRagClient(...)`),
since a grpc.aio channel belongs to one loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
import grpc.aio

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2
from rag.retriever.v1 import retriever_pb2
from rag_client import _requests
from rag_client.channel import DEFAULT_RETRY, DEFAULT_TIMEOUT_S, RetryPolicy, Tls, connection
from rag_client.errors import RagError

Request = TypeVar("Request")
Response = TypeVar("Response")


class AsyncRagClient:
    """An asyncio client of the gateway; the options are RagClient's."""

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
            grpc.aio.insecure_channel(target, options=options)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials, options=options)
        )
        self._stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)

    async def __aenter__(self) -> AsyncRagClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def ask(
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
        request = _requests.ask(namespace, question, retrieval, generation, history, skip_cache)
        return await self._unary(self._stub.Ask, request, timeout_s)

    async def ask_stream(
        self,
        namespace: str,
        question: str,
        *,
        retrieval: gateway_pb2.RetrievalOptions | None = None,
        generation: generator_pb2.GenerationOptions | None = None,
        history: Sequence[common_pb2.ChatTurn] = (),
        skip_cache: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[gateway_pb2.AskStreamResponse, None]:
        """Events as they come. To stop early and cancel the call at once, read it under
        `contextlib.aclosing(client.ask_stream(...))`."""
        request = _requests.ask(namespace, question, retrieval, generation, history, skip_cache)
        call = self._stub.AskStream(
            gateway_pb2.AskStreamRequest(request=request),
            timeout=self._deadline(timeout_s),
            metadata=self._connection.metadata,
        )
        try:
            async for event in call:
                yield event
        except grpc.RpcError as error:
            raise RagError.from_rpc_error(error) from error
        finally:
            call.cancel()

    async def search(
        self,
        namespace: str,
        query: str,
        *,
        retrieval: gateway_pb2.RetrievalOptions | None = None,
        timeout_s: float | None = None,
    ) -> gateway_pb2.SearchResponse:
        return await self._unary(self._stub.Search, _requests.search(namespace, query, retrieval), timeout_s)

    async def ingest_documents(
        self,
        namespace: str,
        documents: Iterable[gateway_pb2.Document],
        *,
        chunking: gateway_pb2.ChunkingOptions | None = None,
        timeout_s: float | None = None,
    ) -> gateway_pb2.IngestDocumentsResponse:
        request = _requests.ingest(namespace, documents, chunking)
        return await self._unary(self._stub.IngestDocuments, request, timeout_s)

    async def delete_documents(
        self,
        namespace: str,
        document_ids: Iterable[str] = (),
        *,
        metadata_filter: common_pb2.MetadataFilter | None = None,
        timeout_s: float | None = None,
    ) -> gateway_pb2.DeleteDocumentsResponse:
        request = _requests.delete(namespace, document_ids, metadata_filter)
        return await self._unary(self._stub.DeleteDocuments, request, timeout_s)

    async def list_documents(
        self,
        namespace: str,
        *,
        state: retriever_pb2.DocumentState.ValueType = retriever_pb2.DOCUMENT_STATE_UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> gateway_pb2.ListDocumentsResponse:
        request = _requests.list_page(namespace, state, page_size, page_token)
        return await self._unary(self._stub.ListDocuments, request, timeout_s)

    async def iter_documents(
        self,
        namespace: str,
        *,
        state: retriever_pb2.DocumentState.ValueType = retriever_pb2.DOCUMENT_STATE_UNSPECIFIED,
        page_size: int = 0,
        timeout_s: float | None = None,
    ) -> AsyncIterator[retriever_pb2.DocumentInfo]:
        page_token = ""
        while True:
            page = await self.list_documents(
                namespace, state=state, page_size=page_size, page_token=page_token, timeout_s=timeout_s
            )
            for document in page.documents:
                yield document
            if not (page_token := page.next_page_token):
                return

    async def submit_feedback(
        self,
        namespace: str,
        question: str,
        items: Iterable[retriever_pb2.FeedbackItem],
        *,
        answer_rating: retriever_pb2.AnswerRating.ValueType | None = None,
        timeout_s: float | None = None,
    ) -> gateway_pb2.SubmitFeedbackResponse:
        request = _requests.submit_feedback(namespace, question, items, answer_rating)
        return await self._unary(self._stub.SubmitFeedback, request, timeout_s)

    async def list_feedback(
        self, namespace: str, *, page_size: int = 0, page_token: str = "", timeout_s: float | None = None
    ) -> gateway_pb2.ListFeedbackResponse:
        request = _requests.list_feedback_page(namespace, page_size, page_token)
        return await self._unary(self._stub.ListFeedback, request, timeout_s)

    async def iter_feedback(
        self, namespace: str, *, page_size: int = 0, timeout_s: float | None = None
    ) -> AsyncIterator[retriever_pb2.Feedback]:
        page_token = ""
        while True:
            page = await self.list_feedback(
                namespace, page_size=page_size, page_token=page_token, timeout_s=timeout_s
            )
            for feedback in page.feedback:
                yield feedback
            if not (page_token := page.next_page_token):
                return

    def _deadline(self, timeout_s: float | None) -> float | None:
        return self._timeout_s if timeout_s is None else timeout_s

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout_s: float | None,
    ) -> Response:
        try:
            return await method(
                request, timeout=self._deadline(timeout_s), metadata=self._connection.metadata
            )
        except grpc.RpcError as error:
            raise RagError.from_rpc_error(error) from error
