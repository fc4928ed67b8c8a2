"""The rerank stage inside RetrieverServicer.Search, with a tiny random cross-encoder.

The model's weights are random: these tests check the plumbing (which candidates are
scored, the order the scores impose, the budget fallback, the flags), not ranking quality.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from sentence_transformers import CrossEncoder

from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2
from services.common.deferred import Deferred
from services.retriever.rerank import Reranker
from services.retriever.servicer import RerankSettings, RetrieverServicer
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput
from tests.retriever.conftest import DIMENSION
from tests.retriever.serving import refusal, serving
from tests.retriever.tiny_cross_encoder import build_tiny_cross_encoder

rng = np.random.default_rng(7)
TEXTS = [f"whales and krill note {i}" for i in range(12)]
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce"))


@pytest.fixture(scope="module")
def reranker(model_path: Path) -> Iterator[Reranker]:
    model = Reranker.load(str(model_path), max_length=MAX_LENGTH)
    yield model
    model.close()


@pytest.fixture
def held_reranker(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reranker]:
    """A reranker whose model scores nothing until the test is over."""
    model = CrossEncoder(str(model_path), max_length=MAX_LENGTH)
    released = threading.Event()
    predict = model.predict

    def predict_once_released(*args: Any, **kwargs: Any) -> Any:
        released.wait()
        return predict(*args, **kwargs)

    monkeypatch.setattr(model, "predict", predict_once_released)
    held = Reranker(model, name="held")
    yield held
    released.set()
    held.close()


@pytest.fixture
async def stored(store: ChunkStore, namespace: str) -> Deferred[ChunkStore]:
    documents = [
        DocumentInput(
            f"d{i}",
            "h",
            "",
            {},
            [ChunkInput(0, text, rng.standard_normal(DIMENSION), 0, len(text), pages=[i + 1, i + 2])],
        )
        for i, text in enumerate(TEXTS)
    ]
    await store.upsert(namespace, documents)
    deferred: Deferred[ChunkStore] = Deferred("the store")
    deferred.resolve(store)
    return deferred


def _servicer(stored: Deferred[ChunkStore], reranker: Reranker | None) -> RetrieverServicer:
    if reranker is None:
        return RetrieverServicer(stored)
    model: Deferred[Reranker] = Deferred("the rerank model")
    model.resolve(reranker)
    return RetrieverServicer(stored, RerankSettings(model, 8, 60_000))


async def _search(
    servicer: RetrieverServicer, request: retriever_pb2.SearchRequest
) -> retriever_pb2.SearchResponse:
    async with serving(servicer) as retriever:
        return await retriever.Search(request)


def _request(namespace: str, **fields: Any) -> retriever_pb2.SearchRequest:
    values: dict[str, Any] = {
        "namespace": namespace,
        "query_embedding": rng.standard_normal(DIMENSION).tolist(),
        "query_text": "whales and krill",
        "top_k": 3,
        "mode": common_pb2.SEARCH_MODE_DENSE,
        **fields,
    }
    return retriever_pb2.SearchRequest(**values)


async def test_reranks_the_fused_candidates_into_the_final_top_k(
    stored: Deferred[ChunkStore], reranker: Reranker, namespace: str
) -> None:
    search = _request(namespace)
    fused = await _search(
        _servicer(stored, None), _request(namespace, query_embedding=search.query_embedding, top_k=8)
    )

    response = await _search(_servicer(stored, reranker), search)

    assert response.reranked
    assert not response.rerank_timed_out
    candidate_texts = [hit.text for hit in fused.hits]
    scores = (await reranker.score("whales and krill", candidate_texts, budget_s=None)).scores
    assert scores is not None
    best_first = sorted(range(len(scores)), key=lambda i: -scores[i])  # ties keep the fused order
    expected = [candidate_texts[i] for i in best_first[:3]]
    assert [hit.text for hit in response.hits] == expected
    assert all(hit.HasField("rerank_score") and hit.score == hit.rerank_score for hit in response.hits)
    assert [hit.score for hit in response.hits] == sorted((hit.score for hit in response.hits), reverse=True)
    assert all(hit.HasField("dense") for hit in response.hits), "leg scores survive the rerank"
    pages = [(int(hit.document_id[1:]), list(hit.pages)) for hit in response.hits]
    assert all(found == [i + 1, i + 2] for i, found in pages), "pages survive the rerank"


async def test_out_of_budget_returns_the_fused_order_flagged(
    stored: Deferred[ChunkStore], held_reranker: Reranker, namespace: str
) -> None:
    search = _request(namespace, rerank=common_pb2.RerankParams(budget_ms=50, candidates=100))
    fused = await _search(_servicer(stored, None), search)

    # The model answers only after the test: the budget runs out first, whatever its length.
    response = await _search(_servicer(stored, held_reranker), search)

    assert response.rerank_timed_out
    assert not response.reranked
    assert [hit.text for hit in response.hits] == [hit.text for hit in fused.hits]
    assert not any(hit.HasField("rerank_score") for hit in response.hits)


async def test_a_request_can_turn_the_configured_reranker_off(
    stored: Deferred[ChunkStore], reranker: Reranker, namespace: str
) -> None:
    search = _request(namespace, rerank=common_pb2.RerankParams(enabled=False))

    response = await _search(_servicer(stored, reranker), search)

    assert not response.reranked
    assert len(response.hits) == 3


async def test_asking_for_a_reranker_that_is_not_configured_is_refused(
    stored: Deferred[ChunkStore], namespace: str
) -> None:
    search = _request(namespace, rerank=common_pb2.RerankParams(enabled=True))

    error = await refusal(_search(_servicer(stored, None), search), grpc.StatusCode.FAILED_PRECONDITION)
    assert "RETRIEVER_RERANK_MODEL" in (error.details() or "")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (common_pb2.RerankParams(candidates=0), "rerank.candidates must be 1..100, got 0"),
        (common_pb2.RerankParams(candidates=500), "rerank.candidates must be 1..100, got 500"),
        (common_pb2.RerankParams(budget_ms=0), "rerank.budget_ms must be 1..60000, got 0"),
    ],
)
async def test_bad_rerank_params_are_refused(
    stored: Deferred[ChunkStore],
    reranker: Reranker,
    namespace: str,
    params: common_pb2.RerankParams,
    message: str,
) -> None:
    search = _request(namespace, rerank=params)
    error = await refusal(_search(_servicer(stored, reranker), search), grpc.StatusCode.INVALID_ARGUMENT)
    assert message in (error.details() or "")
