"""RetrieverService: proto <-> ChunkStore, with input checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from opentelemetry import trace
from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc

from services.common.deferred import Deferred
from services.common.errors import InvalidArgument
from services.common.timing import StageTimer
from services.common.validation import require_namespace, require_range
from services.retriever.filter_proto import filter_from_proto
from services.retriever.filters import Filter
from services.retriever.store import ChunkInput, ChunkStore, DocumentInput, Hit, LegScore, UpsertStatus

Context = grpc.aio.ServicerContext[Any, Any]

MAX_TOP_K = 100
MAX_DOCUMENTS_PER_UPSERT = 256
MAX_CHUNKS_PER_DOCUMENT = 50_000
MAX_DOCUMENT_ID_CHARS = 256
MAX_IDS_PER_CALL = 10_000

_STATUSES = {
    UpsertStatus.CREATED: retriever_pb2.UPSERT_STATUS_CREATED,
    UpsertStatus.UPDATED: retriever_pb2.UPSERT_STATUS_UPDATED,
    UpsertStatus.UNCHANGED: retriever_pb2.UPSERT_STATUS_UNCHANGED,
}


class RetrieverServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    def __init__(self, store: Deferred[ChunkStore], dimension: int) -> None:
        self._store = store
        self._dimension = dimension
        self._tracer = trace.get_tracer(__name__)

    async def Upsert(
        self, request: retriever_pb2.UpsertRequest, context: Context
    ) -> retriever_pb2.UpsertResponse:
        require_namespace(request.namespace)
        require_range(len(request.documents), "documents (count)", 1, MAX_DOCUMENTS_PER_UPSERT)
        documents = [
            _document(d, f"documents[{i}]", self._dimension) for i, d in enumerate(request.documents)
        ]
        timer = StageTimer(self._tracer, "rag.retriever")
        with timer.stage("upsert") as span:
            span.set_attribute("rag.retriever.documents", len(documents))
            outcomes = await self._store.value.upsert(request.namespace, documents)
        return retriever_pb2.UpsertResponse(
            results=[
                retriever_pb2.UpsertResult(
                    document_id=o.document_id, status=_STATUSES[o.status], chunk_count=o.chunk_count
                )
                for o in outcomes
            ],
            timings=timer.to_proto(),
        )

    async def Delete(
        self, request: retriever_pb2.DeleteRequest, context: Context
    ) -> retriever_pb2.DeleteResponse:
        require_namespace(request.namespace)
        _check_ids(request.document_ids)
        metadata_filter = filter_from_proto(request.filter) if request.HasField("filter") else None
        if not request.document_ids and metadata_filter is None:
            raise InvalidArgument("give document_ids, a filter, or both; an empty delete is refused")
        timer = StageTimer(self._tracer, "rag.retriever")
        with timer.stage("delete"):
            documents, chunks = await self._store.value.delete(
                request.namespace, list(request.document_ids), metadata_filter
            )
        return retriever_pb2.DeleteResponse(
            deleted_documents=documents, deleted_chunks=chunks, timings=timer.to_proto()
        )

    async def Search(
        self, request: retriever_pb2.SearchRequest, context: Context
    ) -> retriever_pb2.SearchResponse:
        require_namespace(request.namespace)
        require_range(request.top_k, "top_k", 1, MAX_TOP_K)
        if request.mode not in (common_pb2.SEARCH_MODE_UNSPECIFIED, common_pb2.SEARCH_MODE_DENSE):
            raise InvalidArgument(
                f"mode {common_pb2.SearchMode.Name(request.mode)} is not offered by this retriever; "
                "use SEARCH_MODE_DENSE or leave it unset",
                field="mode",
            )
        embedding = _embedding(request.query_embedding, self._dimension, "query_embedding")
        metadata_filter: Filter | None = (
            filter_from_proto(request.filter) if request.HasField("filter") else None
        )
        ef_search = request.ef_search if request.HasField("ef_search") else None
        if ef_search is not None:
            require_range(ef_search, "ef_search", 1, 1000)
        timer = StageTimer(self._tracer, "rag.retriever")
        with timer.stage("search") as span:
            span.set_attribute("rag.retriever.top_k", request.top_k)
            hits = await self._store.value.search_dense(
                request.namespace, embedding, request.top_k, filter=metadata_filter, ef_search=ef_search
            )
        return retriever_pb2.SearchResponse(
            hits=[_hit(hit) for hit in hits], mode=common_pb2.SEARCH_MODE_DENSE, timings=timer.to_proto()
        )

    async def GetDocumentHashes(
        self, request: retriever_pb2.GetDocumentHashesRequest, context: Context
    ) -> retriever_pb2.GetDocumentHashesResponse:
        require_namespace(request.namespace)
        _check_ids(request.document_ids)
        stored = await self._store.value.stored_documents(request.namespace, list(request.document_ids))
        return retriever_pb2.GetDocumentHashesResponse(
            documents=[
                retriever_pb2.StoredDocument(
                    document_id=s.document_id, content_hash=s.content_hash, chunk_count=s.chunk_count
                )
                for s in stored
            ]
        )


def _check_ids(ids: Sequence[str]) -> None:
    require_range(len(ids), "document_ids (count)", 0, MAX_IDS_PER_CALL)
    for index, document_id in enumerate(ids):
        if not document_id.strip() or len(document_id) > MAX_DOCUMENT_ID_CHARS:
            raise InvalidArgument(
                f"document_ids[{index}] must be 1..{MAX_DOCUMENT_ID_CHARS} characters and not blank",
                field=f"document_ids[{index}]",
            )


def _embedding(values: Sequence[float], dimension: int, field: str) -> list[float]:
    if len(values) != dimension:
        raise InvalidArgument(
            f"{field} must have {dimension} values (the configured embedding dimension), got {len(values)}",
            field=field,
        )
    if not all(math.isfinite(v) for v in values):
        raise InvalidArgument(f"{field} must hold finite numbers only", field=field)
    return list(values)


def _document(proto: retriever_pb2.DocumentRecord, field: str, dimension: int) -> DocumentInput:
    if not proto.document_id.strip() or len(proto.document_id) > MAX_DOCUMENT_ID_CHARS:
        raise InvalidArgument(
            f"{field}.document_id must be 1..{MAX_DOCUMENT_ID_CHARS} characters and not blank",
            field=f"{field}.document_id",
        )
    if not proto.content_hash:
        raise InvalidArgument(f"{field}.content_hash must be set", field=f"{field}.content_hash")
    require_range(len(proto.chunks), f"{field}.chunks (count)", 1, MAX_CHUNKS_PER_DOCUMENT)
    chunks = [
        ChunkInput(
            index=chunk.index,
            text=chunk.text,
            embedding=_embedding(chunk.embedding, dimension, f"{field}.chunks[{i}].embedding"),
            start_char=chunk.start_char,
            end_char=chunk.end_char,
        )
        for i, chunk in enumerate(proto.chunks)
    ]
    return DocumentInput(
        document_id=proto.document_id,
        content_hash=proto.content_hash,
        title=proto.title,
        metadata=json_format.MessageToDict(proto.metadata),
        chunks=chunks,
    )


def _leg(score: LegScore | None) -> retriever_pb2.LegScore | None:
    return None if score is None else retriever_pb2.LegScore(rank=score.rank, score=score.score)


def _hit(hit: Hit) -> retriever_pb2.SearchHit:
    metadata = struct_pb2.Struct()
    metadata.update(hit.metadata)
    return retriever_pb2.SearchHit(
        document_id=hit.document_id,
        chunk_index=hit.chunk_index,
        text=hit.text,
        title=hit.title,
        metadata=metadata,
        score=hit.score,
        dense=_leg(hit.dense),
        keyword=_leg(hit.keyword),
    )
