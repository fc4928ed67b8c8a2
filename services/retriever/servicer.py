"""RetrieverService: proto <-> ChunkStore.

The servicer checks what only a call has (batch sizes, enums, page tokens);
what a document or a search must satisfy, the store checks, once, whoever calls
it. Which namespaces a call may touch is checked before it gets here, from the
gateway's signed token (services/common/internal_auth.py), for every RPC alike.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import struct_pb2
from opentelemetry import trace

from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.deferred import Deferred
from services.common.errors import InvalidArgument
from services.common.limits import require_document_id, require_top_k
from services.common.struct_values import struct_to_dict
from services.common.timing import StageTimer
from services.common.validation import require_namespace, require_range
from services.retriever import feedback_proto, instruments, rerank_stage
from services.retriever.filter_proto import filter_from_proto
from services.retriever.filters import Filter
from services.retriever.hybrid import Fusion, SearchMode
from services.retriever.limits import (
    DEFAULT_PAGE_SIZE,
    MAX_DOCUMENTS_PER_UPSERT,
    MAX_FAILURES_PER_CALL,
    MAX_IDS_PER_CALL,
)
from services.retriever.rerank import Reranker
from services.retriever.store import ChunkStore
from services.retriever.store.records import (
    ChunkInput,
    DocumentInfo,
    DocumentInput,
    DocumentState,
    FailureInput,
    Hit,
    LegScore,
    UpsertStatus,
)

Context = grpc.aio.ServicerContext[Any, Any]

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

# UNSPECIFIED lists every document.
_STATES = {
    retriever_pb2.DOCUMENT_STATE_UNSPECIFIED: DocumentState.ALL,
    retriever_pb2.DOCUMENT_STATE_INDEXED: DocumentState.INDEXED,
    retriever_pb2.DOCUMENT_STATE_FAILED: DocumentState.FAILED,
}

# A page token is the last listed id in unpadded URL-safe base64: opaque to
# callers, safe in a URL, and all the keyset needs to resume.
_PAGE_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
_BAD_PAGE_TOKEN = (
    "page_token is not one this service issued; pass the previous page's next_page_token, "
    "or leave it empty for the first page"
)

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
    fusion: rerank_stage.RerankFusion = rerank_stage.REPLACE


# An index version is a bigint counter; a token beyond it is no token of ours.
MAX_INDEX_VERSION = 2**63 - 1


class RetrieverServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    def __init__(self, store: Deferred[ChunkStore], rerank: RerankSettings | None = None) -> None:
        self._store = store
        self._rerank = rerank
        self._tracer = trace.get_tracer(__name__)

    async def Upsert(
        self, request: retriever_pb2.UpsertRequest, context: Context
    ) -> retriever_pb2.UpsertResponse:
        require_namespace(request.namespace)
        require_range(len(request.documents), "documents (count)", 1, MAX_DOCUMENTS_PER_UPSERT)
        documents = [_document(d, f"documents[{i}]") for i, d in enumerate(request.documents)]
        timer = StageTimer(self._tracer, "rag.retriever")
        with timer.stage("upsert") as span:
            span.set_attribute("rag.retriever.documents", len(documents))
            outcomes = await self._store.value.upsert(request.namespace, documents)
            # Read after the writes committed, on the primary: the caller's read-your-writes token.
            version = await self._store.value.index_version(request.namespace)
        return retriever_pb2.UpsertResponse(
            results=[
                retriever_pb2.UpsertResult(
                    document_id=o.document_id, status=_STATUSES[o.status], chunk_count=o.chunk_count
                )
                for o in outcomes
            ],
            timings=timer.to_proto(),
            index_version=version,
        )

    async def Delete(
        self, request: retriever_pb2.DeleteRequest, context: Context
    ) -> retriever_pb2.DeleteResponse:
        require_namespace(request.namespace)
        _check_id_count(request.document_ids)
        metadata_filter = filter_from_proto(request.filter) if request.HasField("filter") else None
        timer = StageTimer(self._tracer, "rag.retriever")
        with timer.stage("delete"):
            documents, chunks = await self._store.value.delete(
                request.namespace, list(request.document_ids), metadata_filter
            )
            version = await self._store.value.index_version(request.namespace)
        return retriever_pb2.DeleteResponse(
            deleted_documents=documents,
            deleted_chunks=chunks,
            timings=timer.to_proto(),
            index_version=version,
        )

    async def Search(
        self, request: retriever_pb2.SearchRequest, context: Context
    ) -> retriever_pb2.SearchResponse:
        require_namespace(request.namespace)
        # The store checks top_k too, but it is given the rerank depth instead.
        require_top_k(request.top_k)
        mode = _search_mode(request.mode)
        if request.HasField("min_index_version"):
            require_range(request.min_index_version, "min_index_version", 0, MAX_INDEX_VERSION)
        metadata_filter: Filter | None = (
            filter_from_proto(request.filter) if request.HasField("filter") else None
        )
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
        # The store times each leg and the fusion as stages within this one.
        mode_attribute = {"search.mode": mode.value}
        with timer.stage("search", mode_attribute) as span:
            span.set_attribute("rag.retriever.top_k", request.top_k)
            span.set_attribute("rag.retriever.mode", mode.value)
            searched = await store.search_at(
                request.namespace,
                depth,
                mode=mode,
                # Empty is "none": the store says which modes need one.
                embedding=list(request.query_embedding) or None,
                text=request.query_text,
                filter=metadata_filter,
                ef_search=request.ef_search if request.HasField("ef_search") else None,
                fusion=fusion,
                timer=timer,
                min_index_version=(
                    request.min_index_version if request.HasField("min_index_version") else None
                ),
            )
            hits = searched.hits
        reranked = rerank_stage.Reranked(hits[: request.top_k], reranked=False, timed_out=False)
        if rerank_plan is not None and self._rerank is not None:
            with timer.stage("rerank") as span:
                # The first `candidates` hits are reranked; any further ones a larger top_k asks for
                # follow in fused order, so the stage costs the same whatever top_k is.
                candidates = hits[: rerank_plan.candidates]
                span.set_attribute("rag.retriever.rerank_candidates", len(candidates))
                reranked = await rerank_stage.rerank(
                    self._rerank.reranker.value,
                    request.query_text,
                    candidates,
                    request.top_k,
                    rerank_plan.budget_s,
                    self._rerank.fusion,
                    rest=hits[rerank_plan.candidates :],
                )
                span.set_attribute("rag.retriever.rerank_timed_out", reranked.timed_out)
        instruments.search_hits.record(len(reranked.hits), mode_attribute)
        return retriever_pb2.SearchResponse(
            hits=[_hit(hit) for hit in reranked.hits],
            mode=_MODE_PROTOS[mode],
            reranked=reranked.reranked,
            rerank_timed_out=reranked.timed_out,
            timings=timer.to_proto(),
            index_version=searched.index_version,
        )

    async def GetDocumentHashes(
        self, request: retriever_pb2.GetDocumentHashesRequest, context: Context
    ) -> retriever_pb2.GetDocumentHashesResponse:
        require_namespace(request.namespace)
        _check_id_count(request.document_ids)
        stored = await self._store.value.stored_documents(request.namespace, list(request.document_ids))
        return retriever_pb2.GetDocumentHashesResponse(
            documents=[
                retriever_pb2.StoredDocument(
                    document_id=s.document_id, content_hash=s.content_hash, chunk_count=s.chunk_count
                )
                for s in stored
            ]
        )

    async def GetIndexVersion(
        self, request: retriever_pb2.GetIndexVersionRequest, context: Context
    ) -> retriever_pb2.GetIndexVersionResponse:
        require_namespace(request.namespace)
        version = await self._store.value.index_version(request.namespace)
        return retriever_pb2.GetIndexVersionResponse(version=version)

    async def ListDocuments(
        self, request: retriever_pb2.ListDocumentsRequest, context: Context
    ) -> retriever_pb2.ListDocumentsResponse:
        require_namespace(request.namespace)
        state = _document_state(request.state)
        after = _page_token_id(request.page_token)
        page = await self._store.value.list_documents(
            request.namespace, state=state, page_size=request.page_size or DEFAULT_PAGE_SIZE, after=after
        )
        return retriever_pb2.ListDocumentsResponse(
            documents=[_document_info(d) for d in page.documents],
            next_page_token="" if page.next_after is None else _page_token(page.next_after),
        )

    async def RecordFailures(
        self, request: retriever_pb2.RecordFailuresRequest, context: Context
    ) -> retriever_pb2.RecordFailuresResponse:
        require_namespace(request.namespace)
        require_range(len(request.documents), "documents (count)", 1, MAX_FAILURES_PER_CALL)
        await self._store.value.record_failures(
            request.namespace, [FailureInput(d.document_id, d.title, d.reason) for d in request.documents]
        )
        return retriever_pb2.RecordFailuresResponse()

    async def SubmitFeedback(
        self, request: retriever_pb2.SubmitFeedbackRequest, context: Context
    ) -> retriever_pb2.SubmitFeedbackResponse:
        require_namespace(request.namespace)
        submission = feedback_proto.submission(request)
        feedback_id = await self._store.value.submit_feedback(request.namespace, submission)
        return retriever_pb2.SubmitFeedbackResponse(feedback_id=feedback_id, item_count=len(submission.items))

    async def ListFeedback(
        self, request: retriever_pb2.ListFeedbackRequest, context: Context
    ) -> retriever_pb2.ListFeedbackResponse:
        require_namespace(request.namespace)
        after = feedback_proto.page_token_id(request.page_token)
        page = await self._store.value.list_feedback(
            request.namespace, page_size=request.page_size or DEFAULT_PAGE_SIZE, after=after
        )
        return retriever_pb2.ListFeedbackResponse(
            feedback=[feedback_proto.feedback_proto(f) for f in page.feedback],
            next_page_token="" if page.next_after is None else feedback_proto.page_token(page.next_after),
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


def _document_state(value: retriever_pb2.DocumentState.ValueType) -> DocumentState:
    if value not in _STATES:
        accepted = ", ".join(retriever_pb2.DocumentState.Name(s) for s in _STATES)
        raise InvalidArgument(f"state must be one of {accepted}; got {value}", field="state")
    return _STATES[value]


def _page_token(document_id: str) -> str:
    return base64.urlsafe_b64encode(document_id.encode()).decode().rstrip("=")


def _page_token_id(token: str) -> str:
    """The id a page token resumes after; "" (the start) for no token."""
    if not token:
        return ""
    if not _PAGE_TOKEN_PATTERN.fullmatch(token):
        raise InvalidArgument(_BAD_PAGE_TOKEN, field="page_token")
    try:
        document_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(_BAD_PAGE_TOKEN, field="page_token") from None
    # Only a document id can have been the last of a page.
    try:
        return require_document_id(document_id, "page_token")
    except InvalidArgument:
        raise InvalidArgument(_BAD_PAGE_TOKEN, field="page_token") from None


def _check_id_count(ids: Sequence[str]) -> None:
    """The store checks each id; a call carries at most MAX_IDS_PER_CALL."""
    require_range(len(ids), "document_ids (count)", 0, MAX_IDS_PER_CALL)


def _document(proto: retriever_pb2.DocumentRecord, field: str) -> DocumentInput:
    chunks = [
        ChunkInput(
            index=chunk.index,
            text=chunk.text,
            embedding=list(chunk.embedding),
            start_char=chunk.start_char,
            end_char=chunk.end_char,
            pages=list(chunk.pages),
        )
        for chunk in proto.chunks
    ]
    return DocumentInput(
        document_id=proto.document_id,
        content_hash=proto.content_hash,
        title=proto.title,
        metadata=struct_to_dict(proto.metadata, f"{field}.metadata"),
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
        pages=hit.pages,
    )


def _document_info(info: DocumentInfo) -> retriever_pb2.DocumentInfo:
    proto = retriever_pb2.DocumentInfo(
        document_id=info.document_id,
        title=info.title,
        chunk_count=info.chunk_count,
        content_hash=info.content_hash,
    )
    if info.updated_at is not None:
        proto.updated_at.FromDatetime(info.updated_at)
    if info.failure is not None:
        proto.failure.reason = info.failure.reason
        proto.failure.failed_at.FromDatetime(info.failure.failed_at)
    return proto
