"""Cross-encoder reranking: rescoring the fused candidates against the query.

A cross-encoder reads the query and a candidate text together, which ranks far
better than comparing two separately made embeddings, but costs one model pass
per candidate. So it runs only over the few dozen candidates that fusion kept,
off the event loop, and within a time budget: when the budget runs out the
caller keeps the fused order and flags the response rather than failing it.

The model itself is a PairScorer: ONNX Runtime (rerank_onnx.py, the default)
or the sentence-transformers CrossEncoder under torch (rerank_torch.py);
rerank_loading.py picks one. Everything here is the same for both.

Scores are the model's raw logits (higher = more relevant). No activation is
applied: CrossEncoder.predict would by default put a single-label model's
logit through a sigmoid, which orders the candidates the same way but
saturates in float32, so clearly different candidates can tie at 1.0. Raw
logits are only comparable within one query and one model; they are not
probabilities and carry no fixed threshold.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

# Pairs per forward pass; the deadline is checked between batches (see Reranker).
DEFAULT_BATCH_SIZE = 32

# (query, passage)
Pair = tuple[str, str]


class PairScorer(Protocol):
    """A loaded cross-encoder: one forward pass over a batch of pairs."""

    def predict(self, pairs: Sequence[Pair]) -> list[float]:
        """One raw logit per pair, in input order; blocking."""
        ...


@dataclass(frozen=True)
class RerankerIdentity:
    """Which model is serving, as the start-up log and the reranker info metric name it."""

    # The folder (or Hugging Face name) it was loaded from.
    model: str
    # "onnx" or "torch".
    backend: str
    # The weights file served, relative to the folder: the ONNX file, or model.safetensors for torch.
    file: str
    # Of that file; "" when it cannot be found (a Hub model's weights outside any folder).
    sha256: str
    # Tokens per (query, passage) pair; longer pairs are truncated.
    max_length: int
    # The folder's reranker.json (how the model was trained and exported); empty when absent.
    card: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RerankOutcome:
    # One raw logit per input text, in input order; None when the budget ran out.
    scores: list[float] | None
    timed_out: bool


def rerank_order(scores: Sequence[float]) -> list[int]:
    """Indices of `scores` from most to least relevant; ties keep their input (fused) order."""
    # sorted() is stable, so equal scores leave the earlier, better-fused candidate first.
    return sorted(range(len(scores)), key=lambda index: -scores[index])


def _always() -> bool:
    return True


def score_in_batches(
    scorer: PairScorer,
    pairs: Sequence[Pair],
    batch_size: int,
    *,
    keep_going: Callable[[], bool] = _always,
) -> list[float] | None:
    """One raw logit per pair, in input order; None when `keep_going` said no before a batch.

    Longest first, as CrossEncoder.predict orders one call's inputs, so each
    batch holds pairs of similar length and pads little.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(pairs)), key=lambda index: -(len(pairs[index][0]) + len(pairs[index][1])))
    scores = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        if not keep_going():
            return None
        batch = order[start : start + batch_size]
        batch_scores = scorer.predict([pairs[index] for index in batch])
        for index, value in zip(batch, batch_scores, strict=True):
            scores[index] = value
    return scores


class Reranker:
    def __init__(
        self, scorer: PairScorer, identity: RerankerIdentity, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.scorer = scorer
        self.identity = identity
        # The deadline is checked between batches, so the batch size also bounds
        # how long an over-budget call keeps the model busy after its caller has
        # given up: smaller batches free the worker sooner, larger ones run faster.
        self._batch_size = batch_size
        # One worker: the engine already spreads one batch over every core, and
        # a single thread keeps calls into the model strictly one at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank")

    @property
    def name(self) -> str:
        return self.identity.model

    async def score(self, query: str, texts: Sequence[str], *, budget_s: float | None) -> RerankOutcome:
        """Scores each text against `query` within `budget_s` seconds (None: no limit).

        The budget covers waiting for the model behind other calls as well as
        running it. When it runs out this returns timed_out at once; the batch
        already running in the worker thread cannot be interrupted (neither
        engine has a way to stop a forward pass), so it finishes, its result is
        discarded, and no further batches of that call start. Model errors
        within the budget propagate to the caller.
        """
        if not texts:
            return RerankOutcome(scores=[], timed_out=False)
        if budget_s is not None and budget_s <= 0:
            return RerankOutcome(scores=None, timed_out=True)

        stop = threading.Event()
        deadline = None if budget_s is None else time.monotonic() + budget_s
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, self._score_batches, query, list(texts), deadline, stop)
        timeout = asyncio.timeout(budget_s)
        try:
            async with timeout:
                scores = await work
        except TimeoutError:
            # A TimeoutError raised by the model itself is an error, not the budget.
            if not timeout.expired():
                raise
            # The timeout cancelled `work`: a call still queued never runs, and a
            # running one's late result or exception lands on a cancelled future
            # and is dropped there, so nothing is left unretrieved.
            return RerankOutcome(scores=None, timed_out=True)
        finally:
            # On timeout or on the caller's own cancellation, tell the worker not
            # to start another batch for a result nobody is waiting for.
            stop.set()
        if scores is None:
            # The worker saw the deadline pass (between batches, or while queued)
            # just before the event loop's timer fired.
            return RerankOutcome(scores=None, timed_out=True)
        return RerankOutcome(scores=scores, timed_out=False)

    def _score_batches(
        self, query: str, texts: list[str], deadline: float | None, stop: threading.Event
    ) -> list[float] | None:
        """Runs in the worker thread; None when stopped or past the deadline before finishing."""

        def keep_going() -> bool:
            return not stop.is_set() and (deadline is None or time.monotonic() < deadline)

        return score_in_batches(
            self.scorer, [(query, text) for text in texts], self._batch_size, keep_going=keep_going
        )

    def close(self) -> None:
        """Waits for the batch in progress, if any, then stops the worker; later calls to score() fail."""
        self._executor.shutdown(wait=True)
