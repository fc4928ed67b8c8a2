"""The ceiling: texts/s of tokenize + encode in this process, with the encoder the service loads."""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sentence_transformers import SentenceTransformer

from benchkit.cpu import BENCH, CpuMeter, Tally
from benchkit.output import log
from embedder_bench.settings import Settings
from services.embedder.model import EmbeddingModel

BATCH_SIZES = (1, 8, 32, 64)

Encode = Callable[[list[str]], Any]


def encode_for(encode: Encode, texts: Sequence[str], batch: int, seconds: float, tally: Tally) -> None:
    """Consecutive batches of `texts` (wrapping round) through `encode` for `seconds` (at least one batch)."""
    cycle = itertools.cycle(texts)
    meter = CpuMeter({"bench": BENCH})
    started = time.perf_counter()
    done = 0
    while done == 0 or time.perf_counter() - started < seconds:
        encode(list(itertools.islice(cycle, batch)))
        done += batch
    elapsed = time.perf_counter() - started
    tally.add(done, elapsed, meter.stop())


def onnx_encode(model: EmbeddingModel) -> Encode:
    return lambda batch: model.encoder.encode(model.tokenizer.tokenize(batch))


def torch_encode(transformer: SentenceTransformer) -> Encode:
    return lambda batch: transformer.encode(
        batch,
        batch_size=len(batch),
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


@dataclass(frozen=True)
class Ceiling:
    onnx: dict[int, Tally]  # by batch size
    torch: dict[int, Tally]

    @property
    def best_batch(self) -> int:
        return max(self.onnx, key=lambda b: self.onnx[b].rate)

    @property
    def texts_per_s(self) -> float:
        return self.onnx[self.best_batch].rate

    @property
    def torch_best(self) -> float:
        return max(tally.rate for tally in self.torch.values())


def sweep(engines: dict[str, Encode], texts: dict[str, Sequence[str]], s: Settings) -> dict[str, Ceiling]:
    """Each engine at each batch size on each kind of text, a slice at a time, in rounds."""
    tallies = {
        (kind, engine, batch): Tally() for kind in texts for engine in engines for batch in BATCH_SIZES
    }
    for encode in engines.values():
        for kind in texts:
            encode_for(encode, texts[kind], BATCH_SIZES[-1], 0, Tally())  # one batch, untimed
    for number in range(s.sweep_rounds):
        for (kind, engine, batch), tally in tallies.items():
            encode_for(engines[engine], texts[kind], batch, s.sweep_slice_s, tally)
            # Let this engine's worker threads stop spinning before the next one runs.
            time.sleep(0.1)
        log(f"  round {number + 1} of {s.sweep_rounds}")
    return {
        kind: Ceiling(
            {b: tallies[kind, "onnx", b] for b in BATCH_SIZES},
            {b: tallies[kind, "torch", b] for b in BATCH_SIZES},
        )
        for kind in texts
    }


def timed_ms(encode: Encode, text: str) -> float:
    """Milliseconds to embed one text in process."""
    started = time.perf_counter()
    encode([text])
    return (time.perf_counter() - started) * 1000


def single_text_ms(model: EmbeddingModel, texts: Iterator[str], count: int) -> list[float]:
    encode = onnx_encode(model)
    for _ in range(10):
        encode([next(texts)])
    return [timed_ms(encode, next(texts)) for _ in range(count)]


class Reference:
    """Slices of the ceiling (ONNX at its best batch size) taken between the rounds of a measurement."""

    def __init__(self, model: EmbeddingModel, texts: Sequence[str], batch: int, slice_s: float) -> None:
        self._encode = onnx_encode(model)
        self._texts = texts
        self.batch = batch
        self._slice_s = slice_s
        self.rates: list[float] = []  # every slice's, for the report

    def take(self, tally: Tally) -> None:
        encode_for(self._encode, self._texts, self.batch, self._slice_s, tally)
        self.rates.append(tally.rates[-1])

    async def alternate(self, rounds: Sequence[Callable[[], Awaitable[None]]]) -> Tally:
        """Runs the rounds with a slice before each and after the last; the slices' tally."""
        slices = Tally()
        self.take(slices)
        for measure_round in rounds:
            await measure_round()
            self.take(slices)
        return slices
