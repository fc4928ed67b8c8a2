"""RetrieverServicer.Search: proto in, modes and fusion settings through to the store, proto out."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2
from services.common.deferred import Deferred
from services.common.errors import InvalidArgument
from services.retriever.hybrid import Fusion
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import ChunkInput, ChunkStore, DocumentInput
from tests.retriever.conftest import DIMENSION

rng = np.random.default_rng(20240604)

TEXTS = ["Krill feed whales.", "Whales sing.", "The moon pulls the tides.", "Seals eat krill."]


@pytest.fixture
async def servicer(store: ChunkStore, namespace: str) -> RetrieverServicer:
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
    return RetrieverServicer(deferred, DIMENSION)


def request(namespace: str, **fields: Any) -> retriever_pb2.SearchRequest:
    values: dict[str, Any] = {
        "namespace": namespace,
        "query_embedding": rng.standard_normal(DIMENSION).tolist(),
        "query_text": "whales and krill",
        "top_k": 10,
        **fields,
    }
    return retriever_pb2.SearchRequest(**values)


async def test_unset_mode_runs_hybrid_and_says_so(servicer: RetrieverServicer, namespace: str) -> None:
    response = await servicer.Search(request(namespace), context=None)  # type: ignore[arg-type]

    assert response.mode == common_pb2.SEARCH_MODE_HYBRID
    assert len(response.hits) == len(TEXTS)
    both = [hit for hit in response.hits if hit.HasField("dense") and hit.HasField("keyword")]
    assert both, "chunks found by both legs carry both leg scores"
    dense_only = [hit for hit in response.hits if not hit.HasField("keyword")]
    assert {hit.document_id for hit in dense_only} == {"d2"}, "the moon chunk has no query word"
    assert [hit.score for hit in response.hits] == sorted((h.score for h in response.hits), reverse=True)


async def test_keyword_mode_needs_no_embedding(servicer: RetrieverServicer, namespace: str) -> None:
    search = request(namespace, mode=common_pb2.SEARCH_MODE_KEYWORD, query_embedding=[])

    response = await servicer.Search(search, context=None)  # type: ignore[arg-type]

    assert response.mode == common_pb2.SEARCH_MODE_KEYWORD
    assert {hit.document_id for hit in response.hits} == {"d0", "d1", "d3"}
    assert all(hit.HasField("keyword") and not hit.HasField("dense") for hit in response.hits)
    assert [hit.keyword.rank for hit in response.hits] == [1, 2, 3]


async def test_dense_mode_needs_no_text(servicer: RetrieverServicer, namespace: str) -> None:
    search = request(namespace, mode=common_pb2.SEARCH_MODE_DENSE, query_text="")

    response = await servicer.Search(search, context=None)  # type: ignore[arg-type]

    assert response.mode == common_pb2.SEARCH_MODE_DENSE
    assert [hit.dense.rank for hit in response.hits] == [1, 2, 3, 4]
    assert all(hit.score == hit.dense.score for hit in response.hits)


async def test_fusion_fields_left_unset_take_the_server_defaults(
    servicer: RetrieverServicer, store: ChunkStore, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Fusion | None] = []
    search = store.search

    async def spy(*args: Any, fusion: Fusion | None = None, **kwargs: Any) -> Any:
        seen.append(fusion)
        return await search(*args, fusion=fusion, **kwargs)

    monkeypatch.setattr(store, "search", spy)
    fusion = common_pb2.FusionParams(keyword_weight=0.0, candidate_depth=2)

    response = await servicer.Search(request(namespace, fusion=fusion), context=None)  # type: ignore[arg-type]
    await servicer.Search(request(namespace), context=None)  # type: ignore[arg-type]

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
        ({"query_embedding": []}, "query_embedding is needed in hybrid mode", "query_embedding"),
        (
            {"mode": common_pb2.SEARCH_MODE_DENSE, "query_embedding": [0.5] * 3},
            f"query_embedding must have {DIMENSION} values",
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
    servicer: RetrieverServicer, namespace: str, fields: dict[str, Any], message: str, field: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as raised:
        await servicer.Search(request(namespace, **fields), context=None)  # type: ignore[arg-type]
    assert raised.value.field == field
