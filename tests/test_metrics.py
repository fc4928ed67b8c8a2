"""The retrieval metrics against values worked out by hand (log2(3) ≈ 1.58496)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import pytest

from rag_cli.metrics import mrr_at_k, ndcg_at_k, percentile, recall_at_k

# ranked document ids, graded gains by id, cut-off k -> score
RankingMetric = Callable[[list[str], dict[str, float], int], float]
LOG2_3 = math.log2(3)
# Graded gains 1, 2, 3 retrieved in that order, against the ideal 3, 2, 1.
REVERSED_NDCG = (1 + 2 / LOG2_3 + 3 / 2) / (3 + 2 / LOG2_3 + 1 / 2)
# Gains 2, 1, 2 (two tied documents split by a lesser one), against the ideal 2, 2, 1.
SPLIT_TIES_NDCG = (2 + 1 / LOG2_3 + 2 / 2) / (2 + 2 / LOG2_3 + 1 / 2)


@pytest.mark.parametrize(
    ("ranked", "gains", "k", "expected"),
    [
        pytest.param(["a"], {"a": 1}, 10, 1.0, id="the one relevant document first"),
        pytest.param(["x", "a"], {"a": 1}, 10, 1 / LOG2_3, id="relevant second: 1/log2(3)"),
        pytest.param(["x", "y"], {"a": 1}, 10, 0.0, id="no relevant document retrieved"),
        pytest.param([], {"a": 1}, 10, 0.0, id="nothing retrieved"),
        pytest.param(["x", "a"], {"a": 1}, 1, 0.0, id="relevant document below the cut-off"),
        pytest.param(
            ["a"], {"a": 1, "b": 1}, 10, 1 / (1 + 1 / LOG2_3), id="fewer results than k: ideal has both"
        ),
        pytest.param(["a"], {"a": 1, "b": 1, "c": 1}, 1, 1.0, id="ideal cut at k too"),
        pytest.param(
            ["c", "b", "a"], {"a": 3, "b": 2, "c": 1}, 10, REVERSED_NDCG, id="graded gains in reverse order"
        ),
        pytest.param(["b", "a", "c"], {"a": 2, "b": 2, "c": 1}, 10, 1.0, id="ties: either order is ideal"),
        pytest.param(
            ["a", "c", "b"],
            {"a": 2, "b": 2, "c": 1},
            10,
            SPLIT_TIES_NDCG,
            id="ties: tied documents split by a lesser one",
        ),
        pytest.param(
            ["a", "b", "c"], {"a": 0, "b": -1, "c": 1}, 10, 1 / 2, id="zero and negative scores gain nothing"
        ),
        pytest.param(["a"], {"a": 0}, 10, 0.0, id="nothing relevant judged"),
    ],
)
def test_ndcg(ranked: list[str], gains: dict[str, float], k: int, expected: float) -> None:
    assert ndcg_at_k(ranked, gains, k) == pytest.approx(expected)


def test_ndcg_hand_computed_decimal() -> None:
    # DCG = 1 + 2/1.58496 + 3/2 = 3.76186; IDCG = 3 + 2/1.58496 + 1/2 = 4.76186.
    assert ndcg_at_k(["c", "b", "a"], {"a": 3, "b": 2, "c": 1}, 10) == pytest.approx(0.78999, abs=1e-5)


@pytest.mark.parametrize(
    ("ranked", "gains", "k", "expected"),
    [
        pytest.param(["a", "x", "c"], {"a": 1, "b": 2, "c": 0}, 100, 1 / 2, id="one of two relevant"),
        pytest.param(["a", "b"], {"a": 1, "b": 2}, 100, 1.0, id="all relevant"),
        pytest.param(["x", "a", "b"], {"a": 1, "b": 1}, 2, 1 / 2, id="cut at k"),
        pytest.param(["x"], {"a": 1}, 100, 0.0, id="no relevant document retrieved"),
        pytest.param(["a"], {"a": 0}, 100, 0.0, id="nothing relevant judged"),
    ],
)
def test_recall(ranked: list[str], gains: dict[str, float], k: int, expected: float) -> None:
    assert recall_at_k(ranked, gains, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("ranked", "gains", "k", "expected"),
    [
        pytest.param(["a", "b"], {"a": 1, "b": 1}, 10, 1.0, id="first"),
        pytest.param(["x", "y", "a"], {"a": 1}, 10, 1 / 3, id="third"),
        pytest.param(["x", "y", "a"], {"a": 1}, 2, 0.0, id="below the cut-off"),
        pytest.param(["c", "a"], {"a": 1, "c": 0}, 10, 1 / 2, id="score 0 is not relevant"),
        pytest.param([], {"a": 1}, 10, 0.0, id="nothing retrieved"),
    ],
)
def test_mrr(ranked: list[str], gains: dict[str, float], k: int, expected: float) -> None:
    assert mrr_at_k(ranked, gains, k) == pytest.approx(expected)


@pytest.mark.parametrize("metric", [ndcg_at_k, recall_at_k, mrr_at_k])
def test_metrics_reject_a_repeated_document_and_k_below_1(metric: RankingMetric) -> None:
    with pytest.raises(ValueError, match="repeat"):
        metric(["a", "a"], {"a": 1}, 10)
    with pytest.raises(ValueError, match="k must be at least 1"):
        metric(["a"], {"a": 1}, 0)


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([1, 2, 3, 4], 95, 3.85),  # position 3 * 0.95 = 2.85: 3 + 0.85 * (4 - 3)
        ([4, 1, 3, 2], 0, 1),
        ([4, 1, 3, 2], 100, 4),
        ([7], 95, 7),
        ([10, 20], 50, 15),
    ],
)
def test_percentile(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == pytest.approx(expected)


def test_percentile_matches_numpy() -> None:
    rng = random.Random(7)
    for size in (1, 2, 5, 31, 100):
        values = [rng.uniform(0, 100) for _ in range(size)]
        for p in (0, 50, 90, 95, 99, 100):
            assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


def test_percentile_rejects_no_values_and_p_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)
