"""The cross-encoder rerank stage: scoring, time budget, serialisation, loading.

These tests check plumbing, not ranking quality. No pretrained cross-encoder
can be downloaded here, so the model is a tiny randomly initialised BERT
(tests/retriever/tiny_cross_encoder.py) whose scores are noise. What they do
check, with each backend (ONNX Runtime, the default, and torch) serving the
same model folder: one score per text in input order, equal to the model's own
raw-logit predictions; the budget; that calls run one at a time off the event
loop; and that abandoned work neither runs on nor leaks errors.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder

from services.retriever.rerank import Pair, PairScorer, Reranker, RerankOutcome, rerank_order
from services.retriever.rerank_folder import RerankModelError
from services.retriever.rerank_loading import RERANK_BACKENDS, RerankBackend, load_reranker
from tests.retriever.tiny_cross_encoder import build_tiny_reranker_folder

# The tiny model has 128 positions; every text below fits well within that.
MAX_LENGTH = 128
# Small, so that the texts below take several batches and the deadline checks between them are exercised.
BATCH_SIZE = 4

QUERY = "how big is the population of berlin"
TEXTS = [
    "berlin is a big city",
    "the cat is red",
    "paris and london are cities with a big population and many museum and a river",
    "fish",
    "what is the population of the city of berlin and how fast is it growing",
    "blue water",
    "a dog and a cat and a bird",
    "money in the bank",
    "the sun and the moon",
    "vector search over document chunk",
    "unknown zebra words map to unk",
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as the trainer writes it, exported to ONNX."""
    return build_tiny_reranker_folder(tmp_path_factory.mktemp("tiny-cross-encoder"), max_length=MAX_LENGTH)


@pytest.fixture(params=RERANK_BACKENDS)
def backend(request: pytest.FixtureRequest) -> RerankBackend:
    chosen: RerankBackend = request.param
    return chosen


@pytest.fixture(scope="session")
def reference(model_dir: Path) -> CrossEncoder:
    """The same model loaded separately, to compare against its own predict()."""
    model: CrossEncoder = CrossEncoder(str(model_dir), device="cpu", max_length=MAX_LENGTH)
    return model


@pytest.fixture
def reranker(model_dir: Path, backend: RerankBackend) -> Iterator[Reranker]:
    reranker = load_reranker(str(model_dir), backend=backend, max_length=MAX_LENGTH, batch_size=BATCH_SIZE)
    yield reranker
    reranker.close()


def expected_scores(reference: CrossEncoder, query: str, texts: Sequence[str]) -> list[float]:
    """Raw logits straight from CrossEncoder.predict, no activation."""
    logits = reference.predict(
        [(query, text) for text in texts], activation_fn=torch.nn.Identity(), show_progress_bar=False
    )
    return [float(value) for value in logits]


class PredictSpy:
    """Stands in for a scorer's predict: records each call, can hold calls, or fail them by query.

    Each call is one batch of the reranker's, so `queries` has one entry per batch run.
    """

    def __init__(self, scorer: PairScorer, monkeypatch: pytest.MonkeyPatch) -> None:
        self._predict = scorer.predict
        self.queries: list[str] = []
        self.threads: set[int] = set()
        self.active = 0
        self.max_active = 0
        self.entered = threading.Event()
        self.released = threading.Event()
        self.released.set()
        self.errors: dict[str, Exception] = {}
        self._lock = threading.Lock()
        monkeypatch.setattr(scorer, "predict", self)

    def hold(self) -> None:
        """Makes the next calls wait, once started, until release()."""
        self.entered.clear()
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10), "the model was never called"

    def __call__(self, pairs: Sequence[Pair]) -> list[float]:
        query = pairs[0][0]
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.queries.append(query)
            self.threads.add(threading.get_ident())
        try:
            self.entered.set()
            # Bounded, so a bug here fails the test instead of hanging the worker.
            if not self.released.wait(10):
                raise AssertionError("a held model call was never released")
            if query in self.errors:
                raise self.errors[query]
            return self._predict(pairs)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def spied(reranker: Reranker, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Reranker, PredictSpy]]:
    spy = PredictSpy(reranker.scorer, monkeypatch)
    yield reranker, spy
    spy.release()


def batches(count: int) -> int:
    return -(-count // BATCH_SIZE)


async def test_scores_are_the_models_raw_logits_one_per_text_in_input_order(
    reranker: Reranker, reference: CrossEncoder
) -> None:
    outcome = await reranker.score(QUERY, TEXTS, budget_s=None)

    assert outcome.timed_out is False
    assert outcome.scores is not None
    assert len(outcome.scores) == len(TEXTS)
    assert all(isinstance(score, float) for score in outcome.scores)
    # The reranker batches and length-sorts on its own; padding differs, so not bit for bit.
    assert outcome.scores == pytest.approx(expected_scores(reference, QUERY, TEXTS), abs=1e-5)


async def test_a_single_text_and_a_generous_budget(reranker: Reranker, reference: CrossEncoder) -> None:
    outcome = await reranker.score(QUERY, TEXTS[:1], budget_s=60)

    assert outcome.timed_out is False
    assert outcome.scores == pytest.approx(expected_scores(reference, QUERY, TEXTS[:1]), abs=1e-5)


async def test_scores_are_deterministic(reranker: Reranker) -> None:
    first = await reranker.score(QUERY, TEXTS, budget_s=None)
    second = await reranker.score(QUERY, TEXTS, budget_s=None)

    assert first == second


async def test_scores_follow_the_query(reranker: Reranker, reference: CrossEncoder) -> None:
    other = "what colour is the cat"
    outcome = await reranker.score(other, TEXTS, budget_s=None)

    assert outcome.scores == pytest.approx(expected_scores(reference, other, TEXTS), abs=1e-5)
    assert outcome.scores != (await reranker.score(QUERY, TEXTS, budget_s=None)).scores


async def test_empty_input_makes_no_model_call(spied: tuple[Reranker, PredictSpy]) -> None:
    reranker, spy = spied

    assert await reranker.score(QUERY, [], budget_s=None) == RerankOutcome(scores=[], timed_out=False)
    assert await reranker.score(QUERY, (), budget_s=0) == RerankOutcome(scores=[], timed_out=False)
    assert spy.queries == []


@pytest.mark.parametrize(
    ("scores", "order"),
    [
        ([], []),
        ([0.3], [0]),
        ([0.1, 0.5, -1.0, 2.0], [3, 1, 0, 2]),
        # Ties keep input order, which is the fused order the caller passed in.
        ([0.5, 1.0, 0.5, 1.0, 0.5], [1, 3, 0, 2, 4]),
        ([-2.0, -1.0, -3.0], [1, 0, 2]),
    ],
)
def test_rerank_order(scores: list[float], order: list[int]) -> None:
    assert rerank_order(scores) == order


async def test_rerank_order_of_real_scores_sorts_descending(reranker: Reranker) -> None:
    outcome = await reranker.score(QUERY, TEXTS, budget_s=None)
    assert outcome.scores is not None

    ordered = [outcome.scores[index] for index in rerank_order(outcome.scores)]

    assert ordered == sorted(outcome.scores, reverse=True)


async def test_a_budget_too_small_times_out_and_the_next_call_still_works(
    reranker: Reranker, reference: CrossEncoder
) -> None:
    timed_out = await reranker.score(QUERY, TEXTS * 50, budget_s=1e-6)

    assert timed_out == RerankOutcome(scores=None, timed_out=True)

    outcome = await reranker.score(QUERY, TEXTS, budget_s=None)
    assert outcome.timed_out is False
    assert outcome.scores == pytest.approx(expected_scores(reference, QUERY, TEXTS), abs=1e-5)


@pytest.mark.parametrize("budget_s", [0.0, -1.0])
async def test_a_spent_budget_times_out_without_a_model_call(
    spied: tuple[Reranker, PredictSpy], budget_s: float
) -> None:
    reranker, spy = spied

    assert await reranker.score(QUERY, TEXTS, budget_s=budget_s) == RerankOutcome(None, timed_out=True)
    assert spy.queries == []


async def test_an_over_budget_call_stops_after_the_batch_in_progress(
    spied: tuple[Reranker, PredictSpy], reference: CrossEncoder
) -> None:
    reranker, spy = spied
    spy.hold()

    # The first batch is held in the worker until released, so the budget surely runs out.
    outcome = await reranker.score("abandoned", TEXTS, budget_s=0.05)
    assert outcome == RerankOutcome(scores=None, timed_out=True)

    spy.release()
    # Queued behind the abandoned call, so by the time it returns that one has ended.
    after = await reranker.score(QUERY, TEXTS, budget_s=None)

    assert after.scores == pytest.approx(expected_scores(reference, QUERY, TEXTS), abs=1e-5)
    assert batches(len(TEXTS)) > 1
    # The abandoned call finished the batch it was in, and started no other.
    assert spy.queries.count("abandoned") == 1


async def test_a_late_failure_is_discarded_without_leaking(
    spied: tuple[Reranker, PredictSpy], reference: CrossEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    reranker, spy = spied
    spy.hold()
    spy.errors["abandoned"] = RuntimeError("the model failed after its caller gave up")

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        outcome = await reranker.score("abandoned", TEXTS, budget_s=0.05)
        assert outcome == RerankOutcome(scores=None, timed_out=True)

        spy.release()
        # Queued behind the abandoned call, so by the time it returns that one has raised.
        after = await reranker.score(QUERY, TEXTS, budget_s=None)
        # asyncio reports an unretrieved exception only when its future is collected.
        gc.collect()
        await asyncio.sleep(0)

    assert spy.queries.count("abandoned") == 1
    assert after.scores == pytest.approx(expected_scores(reference, QUERY, TEXTS), abs=1e-5)
    assert "never retrieved" not in caplog.text


async def test_a_model_error_within_the_budget_reaches_the_caller(
    spied: tuple[Reranker, PredictSpy],
) -> None:
    reranker, spy = spied
    spy.errors[QUERY] = RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        await reranker.score(QUERY, TEXTS, budget_s=60)


async def test_a_model_timeout_error_is_not_mistaken_for_the_budget(
    spied: tuple[Reranker, PredictSpy],
) -> None:
    reranker, spy = spied
    spy.errors[QUERY] = TimeoutError("from inside the model")

    with pytest.raises(TimeoutError, match="from inside the model"):
        await reranker.score(QUERY, TEXTS, budget_s=60)


async def test_a_call_whose_budget_runs_out_while_queued_never_runs(
    spied: tuple[Reranker, PredictSpy], reference: CrossEncoder
) -> None:
    reranker, spy = spied
    spy.hold()
    first = asyncio.create_task(reranker.score(QUERY, TEXTS, budget_s=None))
    await spy.wait_entered()

    queued = await reranker.score("queued", TEXTS, budget_s=0.05)
    assert queued == RerankOutcome(scores=None, timed_out=True)

    spy.release()
    outcome = await first
    assert outcome.scores == pytest.approx(expected_scores(reference, QUERY, TEXTS), abs=1e-5)
    assert "queued" not in spy.queries


async def test_a_cancelled_caller_stops_the_work_after_the_batch_in_progress(
    spied: tuple[Reranker, PredictSpy],
) -> None:
    reranker, spy = spied
    spy.hold()
    task = asyncio.create_task(reranker.score("cancelled", TEXTS, budget_s=None))
    await spy.wait_entered()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    spy.release()
    assert (await reranker.score(QUERY, TEXTS[:1], budget_s=None)).timed_out is False
    assert spy.queries.count("cancelled") == 1


async def test_concurrent_calls_run_one_at_a_time_off_the_event_loop(
    spied: tuple[Reranker, PredictSpy], reference: CrossEncoder
) -> None:
    reranker, spy = spied
    queries = [f"{word} of berlin" for word in ("population", "river", "museum", "city", "bank")]

    outcomes = await asyncio.gather(*(reranker.score(query, TEXTS, budget_s=None) for query in queries))

    for query, outcome in zip(queries, outcomes, strict=True):
        assert outcome.timed_out is False
        assert outcome.scores == pytest.approx(expected_scores(reference, query, TEXTS), abs=1e-5)
    assert spy.max_active == 1
    assert len(spy.queries) == len(queries) * batches(len(TEXTS))
    # Every batch ran in the one worker thread, none on the event loop's.
    assert len(spy.threads) == 1
    assert threading.get_ident() not in spy.threads


@pytest.mark.parametrize("relative", [False, True])
def test_loading_a_missing_path_says_so(tmp_path: Path, relative: bool, backend: RerankBackend) -> None:
    missing = "./no-such-cross-encoder-here" if relative else str(tmp_path / "missing")

    with pytest.raises(RerankModelError, match="no cross-encoder model directory at"):
        load_reranker(missing, backend=backend)


def test_a_model_with_several_labels_is_refused(
    tmp_path: Path, model_dir: Path, backend: RerankBackend
) -> None:
    two_labels = build_tiny_reranker_folder(
        tmp_path / "two-labels", max_length=MAX_LENGTH, num_labels=2, export=False
    )
    # The ONNX backend must refuse it from its config, whatever graph sits beside it.
    shutil.copytree(model_dir / "onnx", two_labels / "onnx")

    with pytest.raises(RerankModelError, match="single relevance score"):
        load_reranker(str(two_labels), backend=backend, max_length=MAX_LENGTH)


def test_batch_size_must_be_positive(reranker: Reranker) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        Reranker(reranker.scorer, reranker.identity, batch_size=0)


def test_the_name_is_what_it_was_loaded_from(reranker: Reranker, model_dir: Path) -> None:
    assert reranker.name == str(model_dir)
