"""Dynamic batching: texts from concurrent requests share model calls.

Every request's texts join one queue. A single worker takes the oldest waiting
text and the texts closest to it in length (so a batch pads little), up to a
count and a padded-token budget, runs the model on a worker thread, and routes
each row back to the request it came from. The oldest text always goes next,
so no request starves behind a stream of others. The queue is bounded: past
the bound a request is refused at once with RESOURCE_EXHAUSTED and a retry
hint, instead of memory growing without limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.common.errors import ResourceExhausted, Unavailable
from services.embedder import instruments
from services.embedder.encoder import Encoder
from services.embedder.tokens import TokenizedText

log = logging.getLogger(__name__)

# How many of the oldest waiting texts are sorted by length to pick a batch from.
_CANDIDATE_BATCHES = 4


@dataclass(frozen=True)
class BatchLimits:
    max_texts: int
    # Padded tokens: texts in the batch x tokens of its longest text.
    max_tokens: int
    max_wait_s: float
    max_queued_texts: int


@dataclass(eq=False)
class _Request:
    future: asyncio.Future[npt.NDArray[np.float32]]
    vectors: npt.NDArray[np.float32]
    remaining: int


@dataclass(eq=False)
class _Waiting:
    text: TokenizedText
    request: _Request
    row: int
    arrived: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    def __init__(self, encoder: Encoder, dimension: int, limits: BatchLimits) -> None:
        self._encoder = encoder
        self._dimension = dimension
        self.limits = limits
        self._waiting: deque[_Waiting] = deque()
        self._arrived = asyncio.Event()
        # One thread: an engine call already uses every core it is given.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._worker: asyncio.Task[None] | None = None
        # Seconds of model time per text, smoothed; turns queue length into a retry hint.
        self._seconds_per_text = 0.005
        instruments.track_queue(self)

    @property
    def queued_texts(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="embed-batcher")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for waiting in self._waiting:
            _fail(waiting.request, Unavailable("the embedder is shutting down; retry on another replica"))
        self._waiting.clear()
        self._executor.shutdown(wait=True)

    async def embed(self, texts: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        """Embeddings for `texts`, in order, computed in batches shared with other callers."""
        if self._worker is None or self._worker.done():
            raise Unavailable("the embedder's batch worker is not running")
        if len(self._waiting) + len(texts) > self.limits.max_queued_texts:
            retry_ms = max(10, round(len(self._waiting) * self._seconds_per_text * 1000))
            raise ResourceExhausted(
                f"the embedder is overloaded ({len(self._waiting)} texts waiting, at most "
                f"{self.limits.max_queued_texts}); retry in about {retry_ms} ms",
                retry_after_ms=retry_ms,
            )
        request = _Request(
            future=asyncio.get_running_loop().create_future(),
            vectors=np.empty((len(texts), self._dimension), dtype=np.float32),
            remaining=len(texts),
        )
        self._waiting.extend(_Waiting(text, request, row) for row, text in enumerate(texts))
        self._arrived.set()
        return await request.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_batch()
            batch = self._next_batch()
            if not batch:
                continue
            instruments.batch_size.record(len(batch))
            instruments.batch_padded_tokens.record(len(batch) * max(len(waiting.text) for waiting in batch))
            started = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(
                    self._executor, self._encoder.encode, [waiting.text for waiting in batch]
                )
            except Exception as error:
                log.exception("a model batch of %d texts failed", len(batch))
                for waiting in batch:
                    _fail(waiting.request, error)
                continue
            per_text = (time.perf_counter() - started) / len(batch)
            self._seconds_per_text = 0.8 * self._seconds_per_text + 0.2 * per_text
            for waiting, vector in zip(batch, vectors, strict=True):
                _deliver(waiting, vector)

    async def _wait_for_batch(self) -> None:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        # Optionally hold a non-full batch a little for company; by default the
        # model runs as soon as it is free, which batches by itself under load.
        if self.limits.max_wait_s > 0:
            deadline = self._waiting[0].arrived + self.limits.max_wait_s
            while len(self._waiting) < self.limits.max_texts and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break

    def _next_batch(self) -> list[_Waiting]:
        """The oldest live text with its nearest neighbours in length, within the limits."""
        while self._waiting and self._waiting[0].request.future.done():
            self._waiting.popleft()  # its caller left (cancelled) or another row failed it
        if not self._waiting:
            return []
        count = min(len(self._waiting), self.limits.max_texts * _CANDIDATE_BATCHES)
        candidates = [self._waiting.popleft() for _ in range(count)]
        oldest = candidates[0]
        by_length = sorted((c for c in candidates if not c.request.future.done()), key=lambda c: len(c.text))
        chosen = _batch_around(by_length, by_length.index(oldest), self.limits)
        # The rest go back to the front, in arrival order.
        chosen_ids = {id(waiting) for waiting in chosen}
        left = [c for c in candidates if id(c) not in chosen_ids and not c.request.future.done()]
        self._waiting.extendleft(reversed(left))
        return chosen


def _batch_around(by_length: list[_Waiting], anchor: int, limits: BatchLimits) -> list[_Waiting]:
    """Grows a run of the length-sorted list outwards from `anchor` while it fits the limits."""
    low, high = anchor, anchor + 1

    def fits(start: int, end: int) -> bool:
        widest = len(by_length[end - 1].text)
        return end - start <= limits.max_texts and (end - start) * widest <= limits.max_tokens

    while True:
        grew = False
        if high < len(by_length) and fits(low, high + 1):
            high += 1
            grew = True
        if low > 0 and fits(low - 1, high):
            low -= 1
            grew = True
        if not grew:
            break
    return by_length[low:high]


def _deliver(waiting: _Waiting, vector: npt.NDArray[np.float32]) -> None:
    request = waiting.request
    if request.future.done():
        return
    request.vectors[waiting.row] = vector
    request.remaining -= 1
    if request.remaining == 0:
        request.future.set_result(request.vectors)


def _fail(request: _Request, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)
