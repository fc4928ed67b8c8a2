"""EmbedderService: proto <-> cache, tokenizer and batcher / TokenChunker, with input checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from opentelemetry import trace

from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from services.common.deferred import Deferred
from services.common.errors import InvalidArgument
from services.common.limits import max_chunk_tokens, require_chunking
from services.common.timing import StageTimer
from services.common.validation import require_range
from services.embedder.batcher import DynamicBatcher
from services.embedder.cache import CachedEmbedding, EmbeddingCache
from services.embedder.chunking import TokenChunker
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel, InputKind
from services.embedder.tokens import TokenizedText

Context = grpc.aio.ServicerContext[Any, Any]

# Longest text accepted for chunking (about 10 MiB of ASCII).
MAX_CHUNK_TEXT_CHARS = 10 * 1024 * 1024
# Requests with more text than this are tokenized on a thread, off the event loop.
_INLINE_TOKENIZE_CHARS = 4096

_INPUT_KINDS = {
    embedder_pb2.INPUT_TYPE_UNSPECIFIED: InputKind.DOCUMENT,
    embedder_pb2.INPUT_TYPE_DOCUMENT: InputKind.DOCUMENT,
    embedder_pb2.INPUT_TYPE_QUERY: InputKind.QUERY,
}


class Embedder:
    """What serving needs once the model is loaded."""

    def __init__(self, model: EmbeddingModel, batcher: DynamicBatcher, cache: EmbeddingCache) -> None:
        self.model = model
        self.batcher = batcher
        self.cache = cache


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(self, embedder: Deferred[Embedder], settings: EmbedderSettings) -> None:
        self._embedder = embedder
        self._settings = settings
        self._tracer = trace.get_tracer(__name__)

    async def Embed(self, request: embedder_pb2.EmbedRequest, context: Context) -> embedder_pb2.EmbedResponse:
        return await self._embed(request, field_prefix="")

    async def EmbedStream(
        self, requests: AsyncIterator[embedder_pb2.EmbedStreamRequest], context: Context
    ) -> AsyncIterator[embedder_pb2.EmbedStreamResponse]:
        # Batches read but not yet answered. When it is full the reader stops
        # reading, and HTTP/2 flow control holds the client back.
        window: asyncio.Queue[tuple[int, asyncio.Task[embedder_pb2.EmbedResponse]] | None] = asyncio.Queue(
            maxsize=self._settings.stream_window
        )

        async def read() -> None:
            async for message in requests:
                work = self._embed(message.batch, field_prefix=f"batch[sequence={message.sequence}].")
                await window.put((message.sequence, asyncio.create_task(work)))
            await window.put(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                next_item = asyncio.create_task(window.get())
                # The reader fails (a broken stream) or the next batch arrives, whichever first.
                await asyncio.wait({next_item, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not next_item.done():
                    next_item.cancel()
                    reader.result()  # raises the reader's error
                    continue
                item = next_item.result()
                if item is None:
                    break
                sequence, work = item
                yield embedder_pb2.EmbedStreamResponse(sequence=sequence, batch=await work)
        finally:
            reader.cancel()
            while not window.empty():
                if (left := window.get_nowait()) is not None:
                    left[1].cancel()

    async def _embed(
        self, request: embedder_pb2.EmbedRequest, field_prefix: str
    ) -> embedder_pb2.EmbedResponse:
        texts = list(request.texts)
        self._check_texts(texts, field_prefix)
        kind = _INPUT_KINDS.get(request.input_type)
        if kind is None:
            raise InvalidArgument(
                f"input_type {request.input_type} is unknown; use INPUT_TYPE_QUERY or INPUT_TYPE_DOCUMENT",
                field=f"{field_prefix}input_type",
            )
        truncate = request.truncate if request.HasField("truncate") else self._settings.truncate
        embedder = self._embedder.value
        model, cache = embedder.model, embedder.cache
        inputs = model.with_prefix(texts, kind)
        keys = [cache.key(kind.value, text) for text in inputs]
        found = [cache.get(key) for key in keys]
        missing = [i for i, hit in enumerate(found) if hit is None]

        if not truncate:
            for index, hit in enumerate(found):
                if hit is not None and hit.truncated:
                    raise _too_long(index, model, field_prefix)

        timer = StageTimer(self._tracer, "rag.embedder")
        with timer.stage("embed") as span:
            span.set_attribute("rag.embedder.texts", len(texts))
            span.set_attribute("rag.embedder.cache_hits", len(texts) - len(missing))
            if missing:
                tokenized = await _tokenize(model, [inputs[i] for i in missing])
                if not truncate:
                    for index, text in zip(missing, tokenized, strict=True):
                        if text.truncated:
                            raise _too_long(index, model, field_prefix)
                vectors = await embedder.batcher.embed(tokenized)
                for index, text, vector in zip(missing, tokenized, vectors, strict=True):
                    found[index] = computed = CachedEmbedding(vector, text.truncated)
                    cache.put(keys[index], computed)
        results = [hit for hit in found if hit is not None]
        matrix = np.stack([r.vector for r in results])
        return embedder_pb2.EmbedResponse(
            embeddings=[
                embedder_pb2.Embedding(values=row, truncated=r.truncated)
                for row, r in zip(matrix.tolist(), results, strict=True)
            ],
            dimension=model.dimension,
            model=model.name,
            timings=timer.to_proto(),
            cache_hits=len(texts) - len(missing),
        )

    def _check_texts(self, texts: list[str], field_prefix: str) -> None:
        require_range(len(texts), f"{field_prefix}texts (count)", 1, self._settings.max_batch_size)
        limit = self._settings.max_text_chars
        for index, text in enumerate(texts):
            field = f"{field_prefix}texts[{index}]"
            if not text.strip():
                raise InvalidArgument(f"{field} must not be empty or blank", field=field)
            if len(text) > limit:
                message = f"{field} must be at most {limit} characters, got {len(text)}"
                raise InvalidArgument(message, field=field)

    async def Chunk(self, request: embedder_pb2.ChunkRequest, context: Context) -> embedder_pb2.ChunkResponse:
        if len(request.text) > MAX_CHUNK_TEXT_CHARS:
            raise InvalidArgument(
                f"text must be at most {MAX_CHUNK_TEXT_CHARS} characters, got {len(request.text)}",
                field="text",
            )
        model = self._embedder.value.model
        # The defaults are fitted to the model; what the caller sets is checked as it is.
        max_tokens = request.max_tokens or min(
            self._settings.default_chunk_tokens, max_chunk_tokens(model.max_tokens)
        )
        overlap = (
            request.overlap_tokens
            if request.HasField("overlap_tokens")
            else min(self._settings.default_chunk_overlap, max_tokens // 2)
        )
        require_chunking(max_tokens, overlap, model.max_tokens)
        timer = StageTimer(self._tracer, "rag.embedder")
        with timer.stage("chunk"):
            chunker = TokenChunker(model.chunk_tokenizer)
            chunks = await asyncio.to_thread(chunker.split, request.text, max_tokens, overlap)
        return embedder_pb2.ChunkResponse(
            chunks=[
                embedder_pb2.TextChunk(
                    text=c.text, start_char=c.start_char, end_char=c.end_char, token_count=c.token_count
                )
                for c in chunks
            ],
            timings=timer.to_proto(),
        )

    async def Info(self, request: embedder_pb2.InfoRequest, context: Context) -> embedder_pb2.InfoResponse:
        embedder = self._embedder.value
        model, limits, cache = embedder.model, embedder.batcher.limits, embedder.cache
        return embedder_pb2.InfoResponse(
            model=model.name,
            dimension=model.dimension,
            max_tokens=model.max_tokens,
            max_batch_size=self._settings.max_batch_size,
            backend=model.encoder.backend,
            batching=embedder_pb2.BatchingInfo(
                max_batch_texts=limits.max_texts,
                max_batch_tokens=limits.max_tokens,
                max_wait_ms=limits.max_wait_s * 1000,
                max_queued_texts=limits.max_queued_texts,
                queued_texts=embedder.batcher.queued_texts,
            ),
            cache=embedder_pb2.CacheInfo(
                capacity=cache.capacity, size=len(cache), hits=cache.hits, misses=cache.misses
            ),
            truncate_by_default=self._settings.truncate,
            max_text_chars=self._settings.max_text_chars,
        )


async def _tokenize(model: EmbeddingModel, texts: list[str]) -> list[TokenizedText]:
    if sum(len(text) for text in texts) <= _INLINE_TOKENIZE_CHARS:
        return model.tokenizer.tokenize(texts)
    return await asyncio.to_thread(model.tokenizer.tokenize, texts)


def _too_long(index: int, model: EmbeddingModel, field_prefix: str) -> InvalidArgument:
    field = f"{field_prefix}texts[{index}]"
    return InvalidArgument(
        f"{field} is longer than the {model.max_tokens} tokens {model.name} reads; "
        "shorten it, or set truncate to embed its beginning",
        field=field,
    )
