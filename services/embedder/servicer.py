"""EmbedderService: proto <-> EmbeddingModel / TokenChunker, with input checks."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from opentelemetry import trace

from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from services.common.deferred import Deferred
from services.common.errors import InvalidArgument
from services.common.timing import StageTimer
from services.common.validation import require_range
from services.embedder.chunking import TokenChunker
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel, InputKind

Context = grpc.aio.ServicerContext[Any, Any]

# Longest text accepted for embedding; the model reads only its first
# max_tokens tokens, so anything longer is almost certainly a caller bug.
MAX_EMBED_TEXT_CHARS = 100_000
# Longest text accepted for chunking (about 10 MiB of ASCII).
MAX_CHUNK_TEXT_CHARS = 10 * 1024 * 1024

_INPUT_KINDS = {
    embedder_pb2.INPUT_TYPE_UNSPECIFIED: InputKind.DOCUMENT,
    embedder_pb2.INPUT_TYPE_DOCUMENT: InputKind.DOCUMENT,
    embedder_pb2.INPUT_TYPE_QUERY: InputKind.QUERY,
}


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(self, model: Deferred[EmbeddingModel], settings: EmbedderSettings) -> None:
        self._model = model
        self._settings = settings
        self._tracer = trace.get_tracer(__name__)

    async def Embed(self, request: embedder_pb2.EmbedRequest, context: Context) -> embedder_pb2.EmbedResponse:
        texts = list(request.texts)
        require_range(len(texts), "texts (count)", 1, self._settings.max_batch_size)
        for index, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"texts[{index}] must not be empty or blank", field=f"texts[{index}]")
            if len(text) > MAX_EMBED_TEXT_CHARS:
                raise InvalidArgument(
                    f"texts[{index}] must be at most {MAX_EMBED_TEXT_CHARS} characters, got {len(text)}",
                    field=f"texts[{index}]",
                )
        kind = _INPUT_KINDS.get(request.input_type)
        if kind is None:
            raise InvalidArgument(f"input_type {request.input_type} is unknown", field="input_type")
        model = self._model.value
        timer = StageTimer(self._tracer, "rag.embedder")
        with timer.stage("embed") as span:
            span.set_attribute("rag.embedder.batch_size", len(texts))
            vectors = await model.embed(texts, kind)
        return embedder_pb2.EmbedResponse(
            embeddings=[embedder_pb2.Embedding(values=row) for row in vectors.tolist()],
            dimension=model.dimension,
            model=model.name,
            timings=timer.to_proto(),
        )

    async def Chunk(self, request: embedder_pb2.ChunkRequest, context: Context) -> embedder_pb2.ChunkResponse:
        if len(request.text) > MAX_CHUNK_TEXT_CHARS:
            raise InvalidArgument(
                f"text must be at most {MAX_CHUNK_TEXT_CHARS} characters, got {len(request.text)}",
                field="text",
            )
        model = self._model.value
        limit = model.max_tokens - 2  # room for the [CLS] and [SEP] the model adds
        max_tokens = request.max_tokens or min(self._settings.default_chunk_tokens, limit)
        require_range(max_tokens, "max_tokens", 16, limit)
        overlap = (
            request.overlap_tokens
            if request.HasField("overlap_tokens")
            else min(self._settings.default_chunk_overlap, max_tokens // 2)
        )
        require_range(overlap, "overlap_tokens", 0, max_tokens // 2)
        timer = StageTimer(self._tracer, "rag.embedder")
        with timer.stage("chunk"):
            chunker = TokenChunker(model.tokenizer)
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
        model = self._model.value
        return embedder_pb2.InfoResponse(
            model=model.name,
            dimension=model.dimension,
            max_tokens=model.max_tokens,
            max_batch_size=self._settings.max_batch_size,
        )
