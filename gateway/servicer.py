"""GatewayService: validates requests, then hands them to the Pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from gateway import instruments, requests
from gateway.admission import Admission
from gateway.auth import Authorizer
from gateway.config import GatewaySettings
from gateway.pipeline import Deadline, Pipeline
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.timing import StageTimer
from services.common.validation import require_namespace

Context = grpc.aio.ServicerContext[Any, Any]


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self, pipeline: Pipeline, settings: GatewaySettings, authorizer: Authorizer | None = None
    ) -> None:
        self._pipeline = pipeline
        self._settings = settings
        self._authorizer = authorizer or Authorizer(None)
        self._admission = Admission(settings.max_in_flight)
        self._tracer = trace.get_tracer(__name__)

    def _begin(self, context: Context) -> tuple[StageTimer, Deadline]:
        """Admits a validated call (see gateway/admission.py) and starts its clock."""
        self._admission.admit(context)
        remaining = context.time_remaining()
        seconds = self._settings.default_deadline_s if remaining is None else remaining
        return StageTimer(self._tracer, "rag.gateway"), Deadline(seconds)

    async def Search(
        self, request: gateway_pb2.SearchRequest, context: Context
    ) -> gateway_pb2.SearchResponse:
        require_namespace(request.namespace)
        self._authorizer.authorize(context, request.namespace)
        requests.question(request.query, self._settings, "query")
        top_k = requests.top_k(request.retrieval, self._settings, "retrieval.top_k")
        timer, deadline = self._begin(context)
        found = await self._pipeline.search(
            request.namespace, request.query, top_k, request.retrieval, timer, deadline
        )
        return gateway_pb2.SearchResponse(
            hits=found.hits,
            mode=found.mode,
            reranked=found.reranked,
            rerank_timed_out=found.rerank_timed_out,
            timings=timer.to_proto(),
        )

    async def Ask(self, request: gateway_pb2.AskRequest, context: Context) -> gateway_pb2.AskResponse:
        self._authorizer.authorize(context, request.namespace)
        top_k = self._validate_ask(request)
        timer, deadline = self._begin(context)
        response = await self._pipeline.ask(request, top_k, timer, deadline)
        instruments.record_answer(response)
        return response

    async def AskStream(
        self, request: gateway_pb2.AskStreamRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.AskStreamResponse]:
        self._authorizer.authorize(context, request.request.namespace)
        top_k = self._validate_ask(request.request, prefix="request.")
        timer, deadline = self._begin(context)
        async for event in self._pipeline.ask_stream(request.request, top_k, timer, deadline):
            if event.HasField("final"):
                instruments.record_answer(event.final)
            yield event

    def _validate_ask(self, request: gateway_pb2.AskRequest, prefix: str = "") -> int:
        require_namespace(request.namespace, f"{prefix}namespace")
        requests.question(request.question, self._settings, f"{prefix}question")
        return requests.top_k(request.retrieval, self._settings, f"{prefix}retrieval.top_k")

    async def IngestDocuments(
        self, request: gateway_pb2.IngestDocumentsRequest, context: Context
    ) -> gateway_pb2.IngestDocumentsResponse:
        require_namespace(request.namespace)
        self._authorizer.authorize(context, request.namespace)
        timer, deadline = self._begin(context)
        # Reading files (PDF, HTML) is CPU work: off the event loop, so other calls go on.
        documents = await asyncio.to_thread(requests.documents, request.documents, self._settings)
        results = await self._pipeline.ingest(request.namespace, documents, request.chunking, timer, deadline)
        instruments.record_ingest(results)
        return gateway_pb2.IngestDocumentsResponse(results=results, timings=timer.to_proto())

    async def DeleteDocuments(
        self, request: gateway_pb2.DeleteDocumentsRequest, context: Context
    ) -> gateway_pb2.DeleteDocumentsResponse:
        require_namespace(request.namespace)
        self._authorizer.authorize(context, request.namespace)
        if not request.document_ids and not request.HasField("filter"):
            raise InvalidArgument("give document_ids, a filter, or both; an empty delete is refused")
        timer, deadline = self._begin(context)
        deleted = await self._pipeline.delete(request, timer, deadline)
        return gateway_pb2.DeleteDocumentsResponse(
            deleted_documents=deleted.deleted_documents,
            deleted_chunks=deleted.deleted_chunks,
            timings=timer.to_proto(),
        )

    async def ListDocuments(
        self, request: gateway_pb2.ListDocumentsRequest, context: Context
    ) -> gateway_pb2.ListDocumentsResponse:
        require_namespace(request.namespace)
        self._authorizer.authorize(context, request.namespace)
        # Paging and state are checked by the retriever, which owns them.
        _, deadline = self._begin(context)
        return await self._pipeline.list_documents(request, deadline)
