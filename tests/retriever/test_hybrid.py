"""Search modes and reciprocal rank fusion against a real PostgreSQL."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from services.common.errors import InvalidArgument
from services.retriever.config import RetrieverSettings
from services.retriever.filters import FieldEquals
from services.retriever.hybrid import Fusion, SearchMode
from services.retriever.keyword import Bm25
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput, Hit
from tests.retriever.conftest import DIMENSION

Vector = npt.NDArray[np.float32]

rng = np.random.default_rng(20240603)

TEXTS = [
    "Krill feed whales, seals and penguins.",
    "Whales sing long songs under the sea.",
    "Penguins hunt krill and small fish.",
    "The moon pulls the tides twice a day.",
    "Seals rest on the ice between dives.",
    "Krill swarms can be seen from space.",
    "Fish school to avoid seals and whales.",
    "Tides shape the feeding of seals and krill.",
    "Blue whales eat tonnes of krill a day.",
    "Sea ice melts earlier every spring.",
]
QUERY_TEXT = "whales eating krill"


def vector() -> Vector:
    return rng.standard_normal(DIMENSION).astype(np.float32)


def documents(metadata: dict[str, Any] | None = None) -> list[DocumentInput]:
    """Ten one-chunk documents d0..d9; odd ones in team "odd"."""
    return [
        DocumentInput(
            f"d{i}",
            "h1",
            "",
            metadata or {"team": "odd" if i % 2 else "even"},
            [ChunkInput(0, text, vector(), 0, len(text))],
        )
        for i, text in enumerate(TEXTS)
    ]


@pytest.fixture
async def corpus(store: ChunkStore, namespace: str) -> tuple[str, Vector]:
    """A namespace with the ten documents, and a query vector."""
    await store.upsert(namespace, documents())
    return namespace, vector()


def ids(hits: list[Hit]) -> list[str]:
    return [hit.document_id for hit in hits]


async def search(
    store: ChunkStore, namespace: str, query: Vector, mode: SearchMode, top_k: int = 10, **options: Any
) -> list[Hit]:
    return await store.search(namespace, top_k, mode=mode, embedding=query, text=QUERY_TEXT, **options)


@pytest.mark.parametrize(
    "fusion",
    [
        Fusion(rrf_k=10, dense_weight=1.0, keyword_weight=2.0, candidate_depth=5),
        Fusion(rrf_k=1, dense_weight=1.0, keyword_weight=1.0, candidate_depth=10),
        Fusion(rrf_k=1000, dense_weight=0.5, keyword_weight=1.0, candidate_depth=3),
    ],
)
async def test_hybrid_leg_scores_match_the_single_leg_searches(
    store: ChunkStore, corpus: tuple[str, Vector], fusion: Fusion
) -> None:
    namespace, query = corpus
    depth = fusion.candidate_depth

    dense = {h.document_id: h.dense for h in await search(store, namespace, query, SearchMode.DENSE, depth)}
    keyword = {
        h.document_id: h.keyword for h in await search(store, namespace, query, SearchMode.KEYWORD, depth)
    }
    hybrid = await search(store, namespace, query, SearchMode.HYBRID, fusion=fusion)

    assert set(ids(hybrid)) == dense.keys() | keyword.keys(), "the union of each leg's best"
    for hit in hybrid:
        assert hit.dense == dense.get(hit.document_id)
        assert hit.keyword == keyword.get(hit.document_id)
        expected = sum(
            weight / (fusion.rrf_k + leg.rank)
            for weight, leg in ((fusion.dense_weight, hit.dense), (fusion.keyword_weight, hit.keyword))
            if leg is not None
        )
        assert hit.score == pytest.approx(expected, rel=1e-12)
    assert [h.score for h in hybrid] == sorted((h.score for h in hybrid), reverse=True)


async def test_the_default_mode_is_hybrid_with_the_store_defaults(
    store: ChunkStore, corpus: tuple[str, Vector]
) -> None:
    namespace, query = corpus

    default = await store.search(namespace, 10, embedding=query, text=QUERY_TEXT)

    assert default == await search(store, namespace, query, SearchMode.HYBRID, fusion=store.default_fusion)
    assert any(h.dense and h.keyword for h in default)


async def test_a_zero_keyword_weight_gives_the_dense_order(
    store: ChunkStore, corpus: tuple[str, Vector]
) -> None:
    namespace, query = corpus
    dense = await search(store, namespace, query, SearchMode.DENSE, 5)

    hybrid = await search(store, namespace, query, SearchMode.HYBRID, 5, fusion=Fusion(keyword_weight=0))

    assert ids(hybrid) == ids(dense)


async def test_a_zero_dense_weight_gives_the_keyword_order(
    store: ChunkStore, corpus: tuple[str, Vector]
) -> None:
    namespace, query = corpus
    keyword = await search(store, namespace, query, SearchMode.KEYWORD)

    hybrid = await search(store, namespace, query, SearchMode.HYBRID, fusion=Fusion(dense_weight=0))

    # Chunks only the dense leg found score 0 and follow, in chunk order.
    assert ids(hybrid)[: len(keyword)] == ids(keyword)
    assert all(h.score == 0 for h in hybrid[len(keyword) :])


async def test_weights_and_depth_move_the_fused_order(store: ChunkStore, namespace: str) -> None:
    corpus = documents()
    await store.upsert(namespace, corpus)
    # The query vector is d3's own ("The moon pulls the tides"); the query text is about krill and whales.
    query = np.asarray(corpus[3].chunks[0].embedding, dtype=np.float32)
    dense = await search(store, namespace, query, SearchMode.DENSE, 1)
    keyword = await search(store, namespace, query, SearchMode.KEYWORD, 1)
    assert ids(dense) == ["d3"]
    assert ids(keyword) == ["d8"]

    def depth_1(dense_weight: float, keyword_weight: float) -> Fusion:
        return Fusion(rrf_k=60, dense_weight=dense_weight, keyword_weight=keyword_weight, candidate_depth=1)

    # Each leg hands over its best chunk only, and the heavier leg's comes first.
    assert ids(await search(store, namespace, query, SearchMode.HYBRID, fusion=depth_1(1, 2))) == ["d8", "d3"]
    assert ids(await search(store, namespace, query, SearchMode.HYBRID, fusion=depth_1(2, 1))) == ["d3", "d8"]


@pytest.mark.parametrize("mode", list(SearchMode))
async def test_no_mode_crosses_namespaces(store: ChunkStore, namespace: str, mode: SearchMode) -> None:
    query = vector()
    other = f"{namespace}-other"
    # The other namespace holds the query vector and the query's words exactly.
    await store.upsert(other, [DocumentInput("exact", "h", "", {}, [ChunkInput(0, QUERY_TEXT, query, 0, 9)])])
    await store.upsert(namespace, documents())

    hits = await search(store, namespace, query, mode, 100)

    assert hits
    assert "exact" not in ids(hits)
    assert ids(await search(store, other, query, mode, 100)) == ["exact"]
    assert await search(store, f"{namespace}-empty", query, mode) == []


@pytest.mark.parametrize("mode", list(SearchMode))
async def test_filters_apply_in_every_mode(
    store: ChunkStore, corpus: tuple[str, Vector], mode: SearchMode
) -> None:
    namespace, query = corpus

    hits = await search(store, namespace, query, mode, filter=FieldEquals("team", "odd"))

    assert hits
    assert {h.metadata["team"] for h in hits} == {"odd"}
    legs = [leg for h in hits for leg in (h.dense, h.keyword) if leg is not None]
    # Ranks count only the chunks that pass the filter.
    assert {leg.rank for leg in legs} <= set(range(1, len(hits) + 1))


@pytest.mark.parametrize(
    ("fusion", "message", "field"),
    [
        (Fusion(rrf_k=0), "fusion.rrf_k must be a number > 0 and at most 1e+06, got 0", "fusion.rrf_k"),
        (Fusion(rrf_k=-5), "fusion.rrf_k must be a number > 0", "fusion.rrf_k"),
        (Fusion(rrf_k=float("nan")), "fusion.rrf_k must be a number > 0", "fusion.rrf_k"),
        (
            Fusion(dense_weight=-1),
            "fusion.dense_weight must be a number 0..1e+06, got -1",
            "fusion.dense_weight",
        ),
        (
            Fusion(keyword_weight=float("inf")),
            "fusion.keyword_weight must be a number",
            "fusion.keyword_weight",
        ),
        (
            Fusion(dense_weight=0, keyword_weight=0),
            "fusion.dense_weight and fusion.keyword_weight must not both be 0",
            "fusion.dense_weight",
        ),
        (
            Fusion(candidate_depth=0),
            "fusion.candidate_depth must be 1..1000, got 0",
            "fusion.candidate_depth",
        ),
        (
            Fusion(candidate_depth=1001),
            "fusion.candidate_depth must be 1..1000, got 1001",
            "fusion.candidate_depth",
        ),
    ],
)
async def test_invalid_fusion_settings_are_refused(
    store: ChunkStore, namespace: str, fusion: Fusion, message: str, field: str
) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as raised:
        await search(store, namespace, vector(), SearchMode.HYBRID, fusion=fusion)
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("mode", "embedding", "text", "message", "field"),
    [
        (SearchMode.DENSE, None, "words", "query_embedding is needed in dense mode", "query_embedding"),
        (SearchMode.HYBRID, [], "words", "query_embedding is needed in hybrid mode", "query_embedding"),
        (
            SearchMode.HYBRID,
            [1.0],
            "words",
            f"embedding must have {DIMENSION} values (the configured embedding dimension), got 1",
            "query_embedding",
        ),
        (
            SearchMode.HYBRID,
            "vector",
            " ",
            "query_text must not be empty or blank in hybrid mode",
            "query_text",
        ),
        (
            SearchMode.KEYWORD,
            None,
            None,
            "query_text must not be empty or blank in keyword mode",
            "query_text",
        ),
    ],
)
async def test_each_mode_needs_its_inputs(
    store: ChunkStore, namespace: str, mode: SearchMode, embedding: Any, text: Any, message: str, field: str
) -> None:
    query = vector() if isinstance(embedding, str) else embedding
    with pytest.raises(InvalidArgument, match=re.escape(message)) as raised:
        await store.search(namespace, 5, mode=mode, embedding=query, text=text)
    assert raised.value.field == field


async def test_single_leg_modes_ignore_what_they_do_not_need(
    store: ChunkStore, corpus: tuple[str, Vector]
) -> None:
    namespace, query = corpus

    keyword = await store.search(namespace, 3, mode=SearchMode.KEYWORD, embedding=[1.0], text=QUERY_TEXT)
    dense = await store.search(namespace, 3, mode=SearchMode.DENSE, embedding=query, text="")

    assert keyword
    assert all(h.dense is None and h.keyword for h in keyword)
    assert [h.score for h in dense] == [h.dense.score for h in dense if h.dense]


def test_the_settings_default_to_the_tuned_fusion_and_refuse_bad_values() -> None:
    settings = RetrieverSettings(database_url="postgresql://unused")
    assert Fusion() == Fusion(
        settings.default_rrf_k,
        settings.default_dense_weight,
        settings.default_keyword_weight,
        settings.default_candidate_depth,
    )
    assert Bm25() == Bm25(settings.bm25_k1, settings.bm25_b)
    with pytest.raises(ValidationError, match="must not both be 0"):
        RetrieverSettings(database_url="x", default_dense_weight=0, default_keyword_weight=0)
    with pytest.raises(ValidationError, match="text_search_config"):
        RetrieverSettings(database_url="x", text_search_config="english; DROP TABLE rag_chunks")
