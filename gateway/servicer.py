"""GatewayService: validates requests, then hands them to the query or the ingest pipeline, or feedback.

Every call reaches a handler here only once the access interceptor
(gateway/access.py) has checked its API key, admission and its namespace, so
the request's namespace is the one the call may work in: its Tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from gateway import instruments, requests
from gateway.concurrency import Deadline
from gateway.config import GatewaySettings
from gateway.extraction import FileReader
from gateway.feedback import FeedbackRelay
from gateway.ingest import IngestPipeline
from gateway.query import QueryPipeline
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.limits import require_delete_selection
from services.common.tenant import Tenant
from services.common.timing import StageTimer

Context = grpc.aio.ServicerContext[Any, Any]


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        queries: QueryPipeline,
        documents: IngestPipeline,
        settings: GatewaySettings,
        files: FileReader,
        feedback: FeedbackRelay,
    ) -> None:
        self._queries = queries
        self._documents = documents
        self._settings = settings
        self._files = files
        self._feedback = feedback
        self._tracer = trace.get_tracer(__name__)

    def _begin(self, context: Context) -> tuple[StageTimer, Deadline]:
        """Starts a validated call's clock: its stage timings and the deadline its downstream calls share.

        The caller's deadline, cut to GATEWAY_MAX_DEADLINE_S: every downstream
        call gets at most what is left of it, so the call's work ends by then.
        """
        remaining = context.time_remaining()
        asked = self._settings.default_deadline_s if remaining is None else remaining
        return StageTimer(self._tracer, "rag.gateway"), Deadline(min(asked, self._settings.max_deadline_s))

    async def Search(
        self, request: gateway_pb2.SearchRequest, context: Context
    ) -> gateway_pb2.SearchResponse:
        requests.question(request.query, self._settings, "query")
        top_k = requests.top_k(request.retrieval, self._settings, "retrieval.top_k")
        timer, deadline = self._begin(context)
        found = await self._queries.search(
            Tenant(request.namespace), request.query, top_k, request.retrieval, timer, deadline
        )
        return gateway_pb2.SearchResponse(
            hits=found.hits,
            mode=found.mode,
            reranked=found.reranked,
            rerank_timed_out=found.rerank_timed_out,
            timings=timer.to_proto(),
            index_version=found.index_version,
        )

    async def Ask(self, request: gateway_pb2.AskRequest, context: Context) -> gateway_pb2.AskResponse:
        top_k = self._validate_ask(request)
        timer, deadline = self._begin(context)
        response = await self._queries.ask(request, Tenant(request.namespace), top_k, timer, deadline)
        instruments.record_answer(response)
        return response

    async def AskStream(
        self, request: gateway_pb2.AskStreamRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.AskStreamResponse]:
        ask = request.request
        top_k = self._validate_ask(ask, prefix="request.")
        timer, deadline = self._begin(context)
        async for event in self._queries.ask_stream(ask, Tenant(ask.namespace), top_k, timer, deadline):
            if event.HasField("final"):
                instruments.record_answer(event.final)
            yield event

    def _validate_ask(self, request: gateway_pb2.AskRequest, prefix: str = "") -> int:
        requests.question(request.question, self._settings, f"{prefix}question")
        requests.history(request.history, f"{prefix}history")
        return requests.top_k(request.retrieval, self._settings, f"{prefix}retrieval.top_k")

    async def IngestDocuments(
        self, request: gateway_pb2.IngestDocumentsRequest, context: Context
    ) -> gateway_pb2.IngestDocumentsResponse:
        timer, deadline = self._begin(context)
        documents = await requests.documents(request.documents, self._settings, self._files, deadline)
        results = await self._documents.ingest(
            Tenant(request.namespace), documents, request.chunking, timer, deadline
        )
        instruments.record_ingest(results)
        # Read once every write of the call has committed: the caller's read-your-writes token.
        version = await self._queries.index_version(Tenant(request.namespace), deadline)
        return gateway_pb2.IngestDocumentsResponse(
            results=results, timings=timer.to_proto(), index_version=version
        )

    async def DeleteDocuments(
        self, request: gateway_pb2.DeleteDocumentsRequest, context: Context
    ) -> gateway_pb2.DeleteDocumentsResponse:
        require_delete_selection(bool(request.document_ids), request.HasField("filter"))
        timer, deadline = self._begin(context)
        deleted = await self._documents.delete(request, Tenant(request.namespace), timer, deadline)
        return gateway_pb2.DeleteDocumentsResponse(
            deleted_documents=deleted.deleted_documents,
            deleted_chunks=deleted.deleted_chunks,
            timings=timer.to_proto(),
            index_version=deleted.index_version,
        )

    async def ListDocuments(
        self, request: gateway_pb2.ListDocumentsRequest, context: Context
    ) -> gateway_pb2.ListDocumentsResponse:
        # Paging and state are checked by the retriever, which owns them.
        _, deadline = self._begin(context)
        return await self._documents.list_documents(request, Tenant(request.namespace), deadline)

    async def SubmitFeedback(
        self, request: gateway_pb2.SubmitFeedbackRequest, context: Context
    ) -> gateway_pb2.SubmitFeedbackResponse:
        # The question as every question; the judgments and the namespace's documents by the retriever.
        requests.question(request.question, self._settings, "question")
        _, deadline = self._begin(context)
        return await self._feedback.submit(request, Tenant(request.namespace), deadline)

    async def ListFeedback(
        self, request: gateway_pb2.ListFeedbackRequest, context: Context
    ) -> gateway_pb2.ListFeedbackResponse:
        # Paging is checked by the retriever, which owns it.
        _, deadline = self._begin(context)
        return await self._feedback.list_feedback(request, Tenant(request.namespace), deadline)
