"""DynamicBatcher with the real engine: concurrent callers share batches and each gets its own rows."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from services.common.errors import ResourceExhausted
from services.embedder.batcher import BatchLimits, DynamicBatcher
from services.embedder.model import EmbeddingModel
from services.embedder.tokens import TokenizedText

LIMITS = BatchLimits(max_texts=16, max_tokens=1024, max_wait_s=0.0, max_queued_texts=4096)


class RecordingEncoder:
    """The real engine, noting every batch it is given; optionally held until released."""

    backend = "recording"

    def __init__(self, model: EmbeddingModel) -> None:
        self._model = model
        self.batches: list[list[int]] = []  # token counts of each batch's texts
        # Cleared to hold the model (the worker thread waits on it), set to let it run.
        self.gate = threading.Event()
        self.gate.set()
        # Set when a batch has reached the model: from then on the batcher's worker is busy.
        self.in_model = threading.Event()

    def encode(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        self.in_model.set()
        assert self.gate.wait(timeout=60), "the test never let the model run"
        self.batches.append([len(text) for text in batch])
        return self._model.encoder.encode(batch)

    async def until_a_batch_is_in_the_model(self) -> None:
        # In a thread: the event loop must stay free to hand the batch to the model.
        assert await asyncio.to_thread(self.in_model.wait, 60), "no batch reached the model"


@pytest.fixture
def encoder(model: EmbeddingModel) -> RecordingEncoder:
    return RecordingEncoder(model)


@pytest.fixture
async def batcher(encoder: RecordingEncoder, model: EmbeddingModel) -> AsyncIterator[DynamicBatcher]:
    running = DynamicBatcher(encoder, model.dimension, LIMITS)
    running.start()
    yield running
    await running.close()


async def submitted(
    batcher: DynamicBatcher, requests: Sequence[Sequence[TokenizedText]]
) -> list[asyncio.Task[npt.NDArray[np.float32]]]:
    """One task per request, each with its texts queued (or refused) by the time this returns.

    embed() queues a request's texts before its first await, and new tasks run,
    in order, up to that first await in the very next pass of the event loop:
    the one pass that sleep(0) gives them, which leaves the worker no turn in between.
    """
    tasks = [asyncio.create_task(batcher.embed(request)) for request in requests]
    await asyncio.sleep(0)
    return tasks


def texts(count: int, words: int = 3) -> list[str]:
    return [
        f"request {i} is about " + " ".join(f"topic{i * 7 + j}" for j in range(words)) for i in range(count)
    ]


async def test_200_concurrent_callers_each_get_exactly_their_own_vectors(
    batcher: DynamicBatcher, encoder: RecordingEncoder, model: EmbeddingModel
) -> None:
    # Mixed lengths, so the batcher reorders texts by length inside its batches.
    inputs = [text for i, text in enumerate(texts(200, words=3)) if i % 2] + texts(100, words=40)[:100]
    tokenized = model.tokenizer.tokenize(inputs)

    results = await asyncio.gather(*(batcher.embed([text]) for text in tokenized))

    expected = model.encoder.encode(tokenized)
    got = np.stack([result[0] for result in results])
    assert (got * expected).sum(axis=1).min() > 0.99999
    assert max(len(batch) for batch in encoder.batches) > 1, "concurrent callers must share model batches"


async def test_batches_keep_to_the_text_and_padded_token_limits(
    batcher: DynamicBatcher, encoder: RecordingEncoder, model: EmbeddingModel
) -> None:
    inputs = model.tokenizer.tokenize(texts(60, words=3) + texts(30, words=120))

    await asyncio.gather(*(batcher.embed([text]) for text in inputs))

    assert sum(len(batch) for batch in encoder.batches) == len(inputs)
    for batch in encoder.batches:
        assert len(batch) <= LIMITS.max_texts
        assert len(batch) == 1 or len(batch) * max(batch) <= LIMITS.max_tokens
    long_batches = [batch for batch in encoder.batches if max(batch) > 100]
    assert all(min(batch) > 100 for batch in long_batches), "long texts are batched with long texts"


async def test_a_multi_text_request_comes_back_in_its_own_order(
    batcher: DynamicBatcher, model: EmbeddingModel
) -> None:
    inputs = model.tokenizer.tokenize(["short", "a much longer text " * 20, "mid length text here"])

    vectors = await batcher.embed(inputs)

    expected = model.encoder.encode(inputs)
    assert (vectors * expected).sum(axis=1).min() > 0.99999


async def test_past_the_queue_bound_requests_are_refused_with_a_retry_hint_and_it_recovers(
    encoder: RecordingEncoder, model: EmbeddingModel
) -> None:
    limits = BatchLimits(max_texts=4, max_tokens=1024, max_wait_s=0.0, max_queued_texts=8)
    batcher = DynamicBatcher(encoder, model.dimension, limits)
    batcher.start()
    encoder.gate.clear()
    try:
        inputs = model.tokenizer.tokenize(texts(13))
        # The model is held: 4 texts in the running batch, then 8 waiting fill the queue.
        admitted = await submitted(batcher, [[text] for text in inputs[:4]])
        assert batcher.queued_texts == 4
        await encoder.until_a_batch_is_in_the_model()
        assert batcher.queued_texts == 0, "the first 4 texts are the batch in the model"
        admitted += await submitted(batcher, [[text] for text in inputs[4:12]])
        assert batcher.queued_texts == 8

        with pytest.raises(ResourceExhausted, match="overloaded") as refused:
            await batcher.embed([inputs[12]])
        assert refused.value.retry_after_ms is not None
        assert refused.value.retry_after_ms > 0

        encoder.gate.set()
        assert len(await asyncio.gather(*admitted)) == 12
        assert [len(batch) for batch in encoder.batches] == [4, 4, 4]
        assert (await batcher.embed([inputs[12]])).shape == (1, model.dimension)
    finally:
        encoder.gate.set()
        await batcher.close()


async def test_a_cancelled_callers_texts_never_reach_the_model(
    batcher: DynamicBatcher, encoder: RecordingEncoder, model: EmbeddingModel
) -> None:
    encoder.gate.clear()
    [first] = await submitted(batcher, [model.tokenizer.tokenize(["holds the model"])])
    await encoder.until_a_batch_is_in_the_model()
    [abandoned] = await submitted(batcher, [model.tokenizer.tokenize(texts(5))])
    queued_before_the_cancel = batcher.queued_texts

    abandoned.cancel()
    encoder.gate.set()
    await first
    await batcher.embed(model.tokenizer.tokenize(["after"]))

    assert queued_before_the_cancel == 5
    assert abandoned.cancelled()
    assert [len(batch) for batch in encoder.batches] == [1, 1], "only the first and the last text ran"
    assert batcher.queued_texts == 0
