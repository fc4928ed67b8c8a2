"""RetrieverService.Search over a real server: proto in, modes and fusion through to the store, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest

from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.deferred import Deferred
from services.retriever.hybrid import Fusion
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput
from tests.retriever.conftest import DIMENSION
from tests.retriever.serving import refusal, serving, violated_field

rng = np.random.default_rng(20240604)

TEXTS = ["Krill feed whales.", "Whales sing.", "The moon pulls the tides.", "Seals eat krill."]


@pytest.fixture
async def retriever(
    store: ChunkStore, namespace: str
) -> AsyncIterator[retriever_pb2_grpc.RetrieverServiceAsyncStub]:
    await store.upsert(
        namespace,
        [
            DocumentInput(
                f"d{i}", "h", "", {}, [ChunkInput(0, text, rng.standard_normal(DIMENSION), 0, len(text))]
            )
            for i, text in enumerate(TEXTS)
        ],
    )
    deferred: Deferred[ChunkStore] = Deferred("the store")
    deferred.resolve(store)
    async with serving(RetrieverServicer(deferred)) as stub:
        yield stub


def request(namespace: str, **fields: Any) -> retriever_pb2.SearchRequest:
    values: dict[str, Any] = {
        "namespace": namespace,
        "query_embedding": rng.standard_normal(DIMENSION).tolist(),
        "query_text": "whales and krill",
        "top_k": 10,
        **fields,
    }
    return retriever_pb2.SearchRequest(**values)


async def test_unset_mode_runs_hybrid_and_says_so(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub, namespace: str
) -> None:
    response = await retriever.Search(request(namespace))

    assert response.mode == common_pb2.SEARCH_MODE_HYBRID
    assert len(response.hits) == len(TEXTS)
    both = [hit for hit in response.hits if hit.HasField("dense") and hit.HasField("keyword")]
    assert both, "chunks found by both legs carry both leg scores"
    dense_only = [hit for hit in response.hits if not hit.HasField("keyword")]
    assert {hit.document_id for hit in dense_only} == {"d2"}, "the moon chunk has no query word"
    assert [hit.score for hit in response.hits] == sorted((h.score for h in response.hits), reverse=True)


async def test_keyword_mode_needs_no_embedding(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub, namespace: str
) -> None:
    search = request(namespace, mode=common_pb2.SEARCH_MODE_KEYWORD, query_embedding=[])

    response = await retriever.Search(search)

    assert response.mode == common_pb2.SEARCH_MODE_KEYWORD
    assert {hit.document_id for hit in response.hits} == {"d0", "d1", "d3"}
    assert all(hit.HasField("keyword") and not hit.HasField("dense") for hit in response.hits)
    assert [hit.keyword.rank for hit in response.hits] == [1, 2, 3]


async def test_dense_mode_needs_no_text(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub, namespace: str
) -> None:
    search = request(namespace, mode=common_pb2.SEARCH_MODE_DENSE, query_text="")

    response = await retriever.Search(search)

    assert response.mode == common_pb2.SEARCH_MODE_DENSE
    assert [hit.dense.rank for hit in response.hits] == [1, 2, 3, 4]
    assert all(hit.score == hit.dense.score for hit in response.hits)


async def test_fusion_fields_left_unset_take_the_server_defaults(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub,
    store: ChunkStore,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[Fusion | None] = []
    search = store.search_at

    async def spy(*args: Any, fusion: Fusion | None = None, **kwargs: Any) -> Any:
        seen.append(fusion)
        return await search(*args, fusion=fusion, **kwargs)

    monkeypatch.setattr(store, "search_at", spy)
    fusion = common_pb2.FusionParams(keyword_weight=0.0, candidate_depth=2)

    response = await retriever.Search(request(namespace, fusion=fusion))
    await retriever.Search(request(namespace))

    defaults = store.default_fusion
    assert seen == [
        Fusion(defaults.rrf_k, defaults.dense_weight, 0.0, 2),
        None,
    ]
    assert len(response.hits) <= 4
    assert all(hit.dense.rank == i for i, hit in enumerate(response.hits[:2], start=1))


@pytest.mark.parametrize(
    ("fields", "message", "field"),
    [
        ({"mode": 9}, "mode must be one of SEARCH_MODE_UNSPECIFIED", "mode"),
        ({"top_k": 0}, "top_k must be 1..100, got 0", "top_k"),
        ({"top_k": 101}, "top_k must be 1..100, got 101", "top_k"),
        ({"ef_search": 0}, "ef_search must be 1..1000, got 0", "ef_search"),
        ({"ef_search": 1001}, "ef_search must be 1..1000, got 1001", "ef_search"),
        ({"query_embedding": []}, "query_embedding is needed in hybrid mode", "query_embedding"),
        (
            {"mode": common_pb2.SEARCH_MODE_DENSE, "query_embedding": [0.5] * 3},
            f"query: embedding must have {DIMENSION} values (the configured embedding dimension), got 3",
            "query_embedding",
        ),
        ({"query_text": "  "}, "query_text must not be empty or blank in hybrid mode", "query_text"),
        (
            {"fusion": common_pb2.FusionParams(rrf_k=0)},
            "fusion.rrf_k must be a number > 0",
            "fusion.rrf_k",
        ),
        (
            {"fusion": common_pb2.FusionParams(dense_weight=-0.5)},
            "fusion.dense_weight must be a number 0..1e+06, got -0.5",
            "fusion.dense_weight",
        ),
        (
            {"fusion": common_pb2.FusionParams(candidate_depth=5000)},
            "fusion.candidate_depth must be 1..1000, got 5000",
            "fusion.candidate_depth",
        ),
    ],
)
async def test_bad_searches_are_invalid_arguments(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub,
    namespace: str,
    fields: dict[str, Any],
    message: str,
    field: str,
) -> None:
    error = await refusal(retriever.Search(request(namespace, **fields)), grpc.StatusCode.INVALID_ARGUMENT)
    assert message in (error.details() or "")
    assert violated_field(error) == field
