"""Cross-encoder reranking: rescoring the fused candidates against the query.

A cross-encoder reads the query and a candidate text together, which ranks far
better than comparing two separately made embeddings, but costs one model pass
per candidate. So it runs only over the few dozen candidates that fusion kept,
off the event loop, and within a time budget: when the budget runs out the
caller keeps the fused order and flags the response rather than failing it.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from services.retriever.limits import DEFAULT_RERANK_MAX_LENGTH

# Pairs per forward pass; the deadline is checked between batches (see Reranker).
DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class RerankOutcome:
    # One raw logit per input text, in input order; None when the budget ran out.
    scores: list[float] | None
    timed_out: bool


def rerank_order(scores: Sequence[float]) -> list[int]:
    """Indices of `scores` from most to least relevant; ties keep their input (fused) order."""
    # sorted() is stable, so equal scores leave the earlier, better-fused candidate first.
    return sorted(range(len(scores)), key=lambda index: -scores[index])


class Reranker:
    def __init__(self, model: CrossEncoder, *, name: str, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if model.num_labels != 1:
            raise ValueError(
                f"{name} has {model.num_labels} output labels; a reranker needs a model "
                "with a single relevance score (num_labels=1)"
            )
        self._model = model
        self.name = name
        # The deadline is checked between batches, so the batch size also bounds
        # how long an over-budget call keeps the model busy after its caller has
        # given up: smaller batches free the worker sooner, larger ones run faster.
        self._batch_size = batch_size
        self._identity = torch.nn.Identity()
        # One worker: torch already spreads one batch over every core, and a
        # single thread keeps calls into the model strictly one at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank")

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        device: str = "cpu",
        max_length: int = DEFAULT_RERANK_MAX_LENGTH,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> Reranker:
        """Loads a cross-encoder by Hugging Face name or local directory; blocking, so call it in a thread.

        Pairs longer than `max_length` tokens are truncated.
        """
        path = Path(name_or_path).expanduser()
        # Something that can only be a path must exist: otherwise it would be
        # taken for a model name and looked up on the Hub, failing much later
        # (or after network retries) with a message that hides the typo.
        if path.is_absolute() or name_or_path.startswith((".", "~")):
            if not path.is_dir():
                raise FileNotFoundError(
                    f"no cross-encoder model directory at {path}; "
                    "give an existing local directory or a Hugging Face model name"
                )
            name_or_path = str(path)
        model = CrossEncoder(name_or_path, device=device, max_length=max_length)
        return cls(model, name=name_or_path, batch_size=batch_size)

    async def score(self, query: str, texts: Sequence[str], *, budget_s: float | None) -> RerankOutcome:
        """Scores each text against `query` within `budget_s` seconds (None: no limit).

        The budget covers waiting for the model behind other calls as well as
        running it. When it runs out this returns timed_out at once; the batch
        already running in the worker thread cannot be interrupted (torch has no
        way to stop a forward pass), so it finishes, its result is discarded,
        and no further batches of that call start. Model errors within the
        budget propagate to the caller.
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
        # Longest first, as CrossEncoder.predict orders one call's inputs, so
        # each batch holds texts of similar length and pads little.
        order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))
        scores = [0.0] * len(texts)
        for start in range(0, len(order), self._batch_size):
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return None
            batch = order[start : start + self._batch_size]
            logits = self._model.predict(
                [(query, texts[index]) for index in batch],
                batch_size=len(batch),
                activation_fn=self._identity,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
            batch_scores = np.asarray(logits, dtype=np.float32).reshape(-1).tolist()
            for index, value in zip(batch, batch_scores, strict=True):
                scores[index] = value
        return scores

    def close(self) -> None:
        """Waits for the batch in progress, if any, then stops the worker; later calls to score() fail."""
        self._executor.shutdown(wait=True)
