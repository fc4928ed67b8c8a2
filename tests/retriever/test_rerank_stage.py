"""The rerank stage inside RetrieverServicer.Search, with a tiny random cross-encoder.

The model's weights are random: these tests check the plumbing (which candidates are
scored, the order the scores impose, the budget fallback, the flags), not ranking quality.
The reranker is served as configured by default: ONNX Runtime, from an exported folder.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2
from services.common.deferred import Deferred
from services.common.errors import Unavailable
from services.retriever.rerank import Pair, Reranker
from services.retriever.rerank_loading import load_reranker
from services.retriever.rerank_stage import REPLACE, RerankFusion, fusion_order
from services.retriever.rerank_text import passage_text
from services.retriever.servicer import RerankSettings, RetrieverServicer
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput
from tests.retriever.conftest import DIMENSION
from tests.retriever.serving import refusal, serving
from tests.retriever.tiny_cross_encoder import build_tiny_reranker_folder

rng = np.random.default_rng(7)
TEXTS = [f"whales and krill note {i}" for i in range(12)]
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reranker_folder(tmp_path_factory.mktemp("tiny-ce"), max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def reranker(model_path: Path) -> Iterator[Reranker]:
    model = load_reranker(str(model_path), max_length=MAX_LENGTH)
    yield model
    model.close()


@pytest.fixture
def held_reranker(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Reranker]:
    """A reranker whose model scores nothing until the test is over."""
    held = load_reranker(str(model_path), max_length=MAX_LENGTH)
    released = threading.Event()
    predict = held.scorer.predict

    def predict_once_released(pairs: Sequence[Pair]) -> list[float]:
        released.wait()
        return predict(pairs)

    monkeypatch.setattr(held.scorer, "predict", predict_once_released)
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


def _servicer(
    stored: Deferred[ChunkStore], reranker: Reranker | None, fusion: RerankFusion = REPLACE
) -> RetrieverServicer:
    if reranker is None:
        return RetrieverServicer(stored)
    model: Deferred[Reranker] = Deferred("the rerank model")
    model.resolve(reranker)
    return RetrieverServicer(stored, RerankSettings(model, 8, 60_000, fusion))


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


async def test_hits_past_the_reranked_candidates_follow_in_fused_order(
    stored: Deferred[ChunkStore], reranker: Reranker, namespace: str
) -> None:
    few = common_pb2.RerankParams(enabled=True, candidates=2)
    search = _request(namespace, top_k=6, rerank=few)
    fused = await _search(
        _servicer(stored, None), _request(namespace, query_embedding=search.query_embedding, top_k=6)
    )

    response = await _search(_servicer(stored, reranker), search)

    assert response.reranked
    reranked, rest = response.hits[:2], response.hits[2:]
    assert {hit.text for hit in reranked} == {hit.text for hit in fused.hits[:2]}
    assert all(hit.HasField("rerank_score") for hit in reranked)
    assert [hit.text for hit in rest] == [hit.text for hit in fused.hits[2:]]
    assert not any(hit.HasField("rerank_score") for hit in rest)


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


# Four candidates in fused order (index 0 fused first) and their cross-encoder logits:
# the cross-encoder ranks them 1, 2, 0, 3.
HAND_MADE = [0.1, 3.0, 2.0, -1.0]


def test_replace_orders_by_the_cross_encoder_alone() -> None:
    assert REPLACE.order(HAND_MADE) == [(1, 3.0), (2, 2.0), (0, 0.1), (3, -1.0)]
    assert fusion_order("replace")(HAND_MADE) == [1, 2, 0, 3]


def test_rrf_fuses_the_fused_rank_with_the_cross_encoder_rank() -> None:
    fusion = RerankFusion("rrf", weight=1.0, k=60.0)

    order = fusion.order(HAND_MADE)

    # Fused rank 1 and cross-encoder rank 3 beats fused rank 3 and cross-encoder rank 2.
    assert [index for index, _ in order] == [1, 0, 2, 3]
    expected = {0: 1 / 61 + 1 / 63, 1: 1 / 62 + 1 / 61, 2: 1 / 63 + 1 / 62, 3: 1 / 64 + 1 / 64}
    assert dict(order) == pytest.approx(expected)
    assert fusion_order("rrf", weight=1.0)(HAND_MADE) == [1, 0, 2, 3]


@pytest.mark.parametrize(
    ("weight", "order"),
    [
        (0.0, [0, 1, 2, 3]),  # the cross-encoder does not count: the fused order
        (1.0, [1, 0, 2, 3]),
        (100.0, [1, 2, 0, 3]),  # the cross-encoder dominates: as replace
    ],
)
def test_the_rrf_weight_moves_the_order_from_the_fused_one_to_the_cross_encoders(
    weight: float, order: list[int]
) -> None:
    assert fusion_order("rrf", weight=weight)(HAND_MADE) == order


def test_rrf_ties_keep_the_fused_order() -> None:
    # Fused ranks 1, 2 against cross-encoder ranks 2, 1: equal sums.
    assert fusion_order("rrf")([1.0, 2.0]) == [0, 1]
    assert fusion_order("replace")([1.0, 1.0]) == [0, 1]


def test_an_unknown_fusion_is_refused() -> None:
    with pytest.raises(ValueError, match="rerank fusion must be one of rrf, replace; got 'linear'"):
        fusion_order("linear")


async def test_rrf_orders_the_hits_by_the_fused_score_and_keeps_the_logit(
    stored: Deferred[ChunkStore], reranker: Reranker, namespace: str
) -> None:
    rrf = RerankFusion("rrf", weight=1.0, k=60.0)
    search = _request(namespace, top_k=5)
    fused = await _search(
        _servicer(stored, None), _request(namespace, query_embedding=search.query_embedding, top_k=8)
    )

    response = await _search(_servicer(stored, reranker, rrf), search)

    assert response.reranked
    candidate_texts = [hit.text for hit in fused.hits]
    scores = (await reranker.score("whales and krill", candidate_texts, budget_s=None)).scores
    assert scores is not None
    expected = rrf.order(scores)[:5]
    assert [hit.text for hit in response.hits] == [candidate_texts[index] for index, _ in expected]
    assert [hit.score for hit in response.hits] == pytest.approx([score for _, score in expected])
    assert [hit.rerank_score for hit in response.hits] == pytest.approx(
        [scores[index] for index, _ in expected]
    )


async def test_the_cross_encoder_reads_the_title_with_the_text(
    store: ChunkStore, reranker: Reranker, namespace: str
) -> None:
    texts = {
        "t0": ("Krill", "They feed whales."),
        "t1": ("", "whales and krill"),
        "t2": ("Whales", "Whales eat."),
    }
    await store.upsert(
        namespace,
        [
            DocumentInput(
                document_id,
                "h",
                title,
                {},
                [ChunkInput(0, text, rng.standard_normal(DIMENSION), 0, len(text))],
            )
            for document_id, (title, text) in texts.items()
        ],
    )
    deferred: Deferred[ChunkStore] = Deferred("the store")
    deferred.resolve(store)

    response = await _search(_servicer(deferred, reranker), _request(namespace, top_k=3))

    assert response.reranked
    assert len(response.hits) == 3
    for hit in response.hits:
        title, text = texts[hit.document_id]
        alone = await reranker.score("whales and krill", [passage_text(title, text)], budget_s=None)
        assert alone.scores is not None
        assert hit.rerank_score == pytest.approx(alone.scores[0], abs=1e-5)
    untitled = await reranker.score("whales and krill", ["They feed whales."], budget_s=None)
    assert untitled.scores is not None
    titled = next(hit for hit in response.hits if hit.document_id == "t0")
    assert titled.rerank_score != pytest.approx(untitled.scores[0], abs=1e-5), "the title changes the score"


async def test_a_reranker_that_failed_to_load_makes_searches_unavailable_saying_why(
    stored: Deferred[ChunkStore], namespace: str
) -> None:
    model: Deferred[Reranker] = Deferred("the rerank model")
    model.fail(Unavailable("this retriever's rerank model failed to load (no tokenizer)"))
    servicer = RetrieverServicer(stored, RerankSettings(model, 8, 60_000))

    error = await refusal(_search(servicer, _request(namespace)), grpc.StatusCode.UNAVAILABLE)
    assert "rerank model failed to load (no tokenizer)" in (error.details() or "")
    # Without the reranker, the same retriever still searches.
    plain = await _search(servicer, _request(namespace, rerank=common_pb2.RerankParams(enabled=False)))
    assert len(plain.hits) == 3
