"""The ways to make one search, each an async call taking a query and giving back what it measured.

- floor, store: in this process (floor.py);
- gateway: Search through the gateway, as a backend calls it;
- embedder, retriever: each service called directly over gRPC, signed as the gateway signs its calls,
  the retriever given the query's vector computed beforehand.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from rag.common.v1 import common_pb2
from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from search_bench.floor import ChunkKey, Floor, QueryEmbedder, StoreSearch
from search_bench.settings import TOP_K
from services.common.tenant import Tenant
from services.retriever.hybrid import SearchMode

CALL_TIMEOUT_S = 60.0

MODES = {
    SearchMode.DENSE: common_pb2.SEARCH_MODE_DENSE,
    SearchMode.HYBRID: common_pb2.SEARCH_MODE_HYBRID,
}


@dataclass
class Sample:
    """One call: its wall time, and the stage timings its response reported (ms)."""

    ms: float
    stages: dict[str, float] = field(default_factory=dict)
    hits: list[ChunkKey] = field(default_factory=list)


class _Timed(Protocol):
    @property
    def timings(self) -> Sequence[common_pb2.StageTiming]: ...


Response = TypeVar("Response", bound=_Timed)

# Given the index of a query, makes one search with it.
Call = Callable[[int], Awaitable[Sample]]


def _stages(timings: Sequence[common_pb2.StageTiming]) -> dict[str, float]:
    return {t.stage: t.duration_ms for t in timings}


def _keys(hits: Sequence[retriever_pb2.SearchHit]) -> list[ChunkKey]:
    return [(h.document_id, h.chunk_index) for h in hits]


def in_process(search: Floor | StoreSearch, namespace: str, queries: Sequence[str], mode: SearchMode) -> Call:
    async def call(index: int) -> Sample:
        started = time.perf_counter()
        hits = await search.search(namespace, queries[index], mode, TOP_K)
        return Sample((time.perf_counter() - started) * 1000, hits=hits)

    return call


def gateway_search(
    stubs: Sequence[gateway_pb2_grpc.GatewayServiceAsyncStub],
    namespace: str,
    queries: Sequence[str],
    mode: SearchMode,
) -> Call:
    options = gateway_pb2.RetrievalOptions(top_k=TOP_K, mode=MODES[mode])

    async def call(index: int) -> Sample:
        request = gateway_pb2.SearchRequest(namespace=namespace, query=queries[index], retrieval=options)
        started = time.perf_counter()
        response = await stubs[index % len(stubs)].Search(request, timeout=CALL_TIMEOUT_S)
        return Sample((time.perf_counter() - started) * 1000, _stages(response.timings), _keys(response.hits))

    return call


def embedder_embed(
    stubs: Sequence[embedder_pb2_grpc.EmbedderServiceAsyncStub], queries: Sequence[str]
) -> Call:
    async def call(index: int) -> Sample:
        request = embedder_pb2.EmbedRequest(
            texts=[queries[index]], input_type=embedder_pb2.INPUT_TYPE_QUERY, truncate=True
        )
        started = time.perf_counter()
        response = await stubs[index % len(stubs)].Embed(request, timeout=CALL_TIMEOUT_S)
        if response.cache_hits:
            raise RuntimeError("the embedder answered from its cache; it must be off")
        return Sample((time.perf_counter() - started) * 1000, _stages(response.timings))

    return call


def retriever_search(
    stubs: Sequence[retriever_pb2_grpc.RetrieverServiceAsyncStub],
    namespace: str,
    queries: Sequence[str],
    vectors: Sequence[Sequence[float]],
    mode: SearchMode,
) -> Call:
    metadata = Tenant(namespace).metadata()

    async def call(index: int) -> Sample:
        request = retriever_pb2.SearchRequest(
            namespace=namespace,
            query_embedding=vectors[index],
            query_text=queries[index],
            top_k=TOP_K,
            mode=MODES[mode],
        )
        started = time.perf_counter()
        response = await stubs[index % len(stubs)].Search(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
        return Sample((time.perf_counter() - started) * 1000, _stages(response.timings), _keys(response.hits))

    return call


def embed_in_process(embedder: QueryEmbedder, queries: Sequence[str]) -> Call:
    """The floor's embedding alone: the in-process ceiling for one-text embedding calls."""

    async def call(index: int) -> Sample:
        started = time.perf_counter()
        await embedder.embed(queries[index])
        return Sample((time.perf_counter() - started) * 1000)

    return call


async def timed(call: Awaitable[Response]) -> tuple[Response, Sample]:
    """A call made just now, awaited: its response and its Sample, with the stage timings it reports."""
    started = time.perf_counter()
    response = await call
    return response, Sample((time.perf_counter() - started) * 1000, _stages(response.timings))
