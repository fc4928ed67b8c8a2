"""RetrieverService: proto <-> ChunkStore, with input checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
from services.retriever import instruments, rerank_stage
from services.retriever.filter_proto import filter_from_proto
from services.retriever.filters import Filter
from services.retriever.hybrid import Fusion, SearchMode
from services.retriever.rerank import Reranker
from services.retriever.store import ChunkInput, ChunkStore, DocumentInput, Hit, LegScore, UpsertStatus

Context = grpc.aio.ServicerContext[Any, Any]

MAX_TOP_K = 100
MAX_DOCUMENTS_PER_UPSERT = 256
MAX_CHUNKS_PER_DOCUMENT = 50_000
MAX_DOCUMENT_ID_CHARS = 256
MAX_IDS_PER_CALL = 10_000

# UNSPECIFIED means the server's default: hybrid.
_MODES = {
    common_pb2.SEARCH_MODE_UNSPECIFIED: SearchMode.HYBRID,
    common_pb2.SEARCH_MODE_DENSE: SearchMode.DENSE,
    common_pb2.SEARCH_MODE_KEYWORD: SearchMode.KEYWORD,
    common_pb2.SEARCH_MODE_HYBRID: SearchMode.HYBRID,
}
_MODE_PROTOS = {
    SearchMode.DENSE: common_pb2.SEARCH_MODE_DENSE,
    SearchMode.KEYWORD: common_pb2.SEARCH_MODE_KEYWORD,
    SearchMode.HYBRID: common_pb2.SEARCH_MODE_HYBRID,
}

_STATUSES = {
    UpsertStatus.CREATED: retriever_pb2.UPSERT_STATUS_CREATED,
    UpsertStatus.UPDATED: retriever_pb2.UPSERT_STATUS_UPDATED,
    UpsertStatus.UNCHANGED: retriever_pb2.UPSERT_STATUS_UNCHANGED,
}


@dataclass(frozen=True)
class RerankSettings:
    reranker: Deferred[Reranker]
    default_candidates: int
    default_budget_ms: int


class RetrieverServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    def __init__(
        self, store: Deferred[ChunkStore], dimension: int, rerank: RerankSettings | None = None
    ) -> None:
        self._store = store
        self._dimension = dimension
        self._rerank = rerank
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
        mode = _search_mode(request.mode)
        # An empty query_embedding is "none" (keyword mode needs none); the
        # store says which modes need one. A wrong one is refused here.
        embedding = (
            _embedding(request.query_embedding, self._dimension, "query_embedding")
            if request.query_embedding and mode is not SearchMode.KEYWORD
            else None
        )
        metadata_filter: Filter | None = (
            filter_from_proto(request.filter) if request.HasField("filter") else None
        )
        ef_search = request.ef_search if request.HasField("ef_search") else None
        if ef_search is not None:
            require_range(ef_search, "ef_search", 1, 1000)
        store = self._store.value
        fusion = _fusion(request.fusion, store.default_fusion) if request.HasField("fusion") else None
        rerank_plan = rerank_stage.plan(
            request.rerank,
            configured=self._rerank is not None,
            default_candidates=self._rerank.default_candidates if self._rerank else 0,
            default_budget_ms=self._rerank.default_budget_ms if self._rerank else 0,
        )
        depth = max(request.top_k, rerank_plan.candidates) if rerank_plan else request.top_k
        timer = StageTimer(self._tracer, "rag.retriever")
        # One SQL statement runs both legs and the fusion: the mode tells their latencies apart.
        mode_attribute = {"search.mode": mode.value}
        with timer.stage("search", mode_attribute) as span:
            span.set_attribute("rag.retriever.top_k", request.top_k)
            span.set_attribute("rag.retriever.mode", mode.value)
            hits = await store.search(
                request.namespace,
                depth,
                mode=mode,
                embedding=embedding,
                text=request.query_text,
                filter=metadata_filter,
                ef_search=ef_search,
                fusion=fusion,
            )
        reranked = rerank_stage.Reranked(hits[: request.top_k], reranked=False, timed_out=False)
        if rerank_plan is not None and self._rerank is not None:
            with timer.stage("rerank") as span:
                span.set_attribute("rag.retriever.rerank_candidates", len(hits))
                reranked = await rerank_stage.rerank(
                    self._rerank.reranker.value, request.query_text, hits, request.top_k, rerank_plan.budget_s
                )
                span.set_attribute("rag.retriever.rerank_timed_out", reranked.timed_out)
        instruments.search_hits.record(len(reranked.hits), mode_attribute)
        return retriever_pb2.SearchResponse(
            hits=[_hit(hit) for hit in reranked.hits],
            mode=_MODE_PROTOS[mode],
            reranked=reranked.reranked,
            rerank_timed_out=reranked.timed_out,
            timings=timer.to_proto(),
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


def _search_mode(value: common_pb2.SearchMode.ValueType) -> SearchMode:
    # Proto3 enums are open: an unknown number arrives as itself.
    if value not in _MODES:
        accepted = ", ".join(common_pb2.SearchMode.Name(m) for m in _MODES)
        raise InvalidArgument(f"mode must be one of {accepted}; got {value}", field="mode")
    return _MODES[value]


def _fusion(proto: common_pb2.FusionParams, defaults: Fusion) -> Fusion:
    """The request's fusion settings, the server's defaults where it sets none; the store checks them."""
    return Fusion(
        rrf_k=proto.rrf_k if proto.HasField("rrf_k") else defaults.rrf_k,
        dense_weight=proto.dense_weight if proto.HasField("dense_weight") else defaults.dense_weight,
        keyword_weight=proto.keyword_weight if proto.HasField("keyword_weight") else defaults.keyword_weight,
        candidate_depth=(
            proto.candidate_depth if proto.HasField("candidate_depth") else defaults.candidate_depth
        ),
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
        rerank_score=hit.rerank_score,
    )
