"""GeneratorService: proto <-> generator domain types, with input checks.

Each call assembles the context first (context.py: best first, near-duplicates and
what does not fit the model's window dropped), then hands the kept sources to the
backend. Their numbers stay those of the request, so [n] still names context[n-1].
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from opentelemetry import trace

from rag.common.v1 import common_pb2
from rag.generator.v1 import generator_pb2, generator_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.limits import MAX_QUESTION_CHARS, require_history
from services.common.struct_values import struct_to_dict
from services.common.timing import StageTimer
from services.common.validation import require_range, require_text
from services.generator import instruments
from services.generator.backends.base import AnswerBackend
from services.generator.context import AssembledContext, ContextAssembler, PromptTooLong
from services.generator.sources import Answer, GenerationOptions, Source, Turn

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_CONTEXT_CHUNKS = 100
MAX_TEMPERATURE = 2.0
MAX_ANSWER_TOKENS = 8192

_ROLES = {common_pb2.CHAT_ROLE_USER: "user", common_pb2.CHAT_ROLE_ASSISTANT: "assistant"}
_OUTCOMES = {True: generator_pb2.ANSWER_OUTCOME_ANSWERED, False: generator_pb2.ANSWER_OUTCOME_NO_ANSWER}


class GeneratorServicer(generator_pb2_grpc.GeneratorServiceServicer):
    def __init__(
        self,
        backend: AnswerBackend,
        assembler: ContextAssembler,
        default_max_tokens: int,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._backend = backend
        self._assembler = assembler
        self._default_max_tokens = default_max_tokens
        self._tracer = tracer or trace.get_tracer(__name__)

    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: Context
    ) -> generator_pb2.GenerateResponse:
        question, sources, history, options = self._parse(request, "")
        timer = StageTimer(self._tracer, "rag.generator")
        with timer.stage("generate") as span:
            assembled = await self._assemble(question, sources, history, options, "", span)
            answer = await self._backend.answer(question, assembled.sources, assembled.history, options)
        instruments.record_usage(answer)
        return _response(answer, timer)

    async def GenerateStream(
        self, request: generator_pb2.GenerateStreamRequest, context: Context
    ) -> AsyncIterator[generator_pb2.GenerateStreamResponse]:
        question, sources, history, options = self._parse(request.request, "request.")
        timer = StageTimer(self._tracer, "rag.generator")
        with timer.stage("generate") as span:
            assembled = await self._assemble(question, sources, history, options, "request.", span)
            events = self._backend.stream(question, assembled.sources, assembled.history, options)
            async with _closing(events):
                async for event in events:
                    if isinstance(event, Answer):
                        final = event
                    else:
                        yield generator_pb2.GenerateStreamResponse(
                            delta=generator_pb2.AnswerDelta(text=event)
                        )
        instruments.record_usage(final)
        yield generator_pb2.GenerateStreamResponse(final=_response(final, timer))

    async def _assemble(
        self,
        question: str,
        sources: list[Source],
        history: list[Turn],
        options: GenerationOptions,
        prefix: str,
        span: trace.Span,
    ) -> AssembledContext:
        max_tokens = options.max_tokens or self._default_max_tokens
        try:
            # Tokenizing and comparing up to 100 chunks takes tens of milliseconds of CPU:
            # a worker thread keeps the event loop serving (the tokenizer drops the GIL).
            assembled = await asyncio.to_thread(
                self._assembler.assemble, question, sources, history, max_tokens
            )
        except PromptTooLong as error:
            raise InvalidArgument(str(error), field=f"{prefix}options.max_tokens") from error
        span.set_attribute("rag.generator.sources", len(sources))
        span.set_attribute("rag.generator.sources_kept", len(assembled.sources))
        span.set_attribute("rag.generator.sources_dropped", len(assembled.dropped_sources))
        span.set_attribute("rag.generator.history_turns_dropped", assembled.dropped_turns)
        if assembled.prompt_tokens_estimate is not None:
            span.set_attribute("rag.generator.prompt_tokens_estimate", assembled.prompt_tokens_estimate)
        if assembled.dropped_sources or assembled.dropped_turns or assembled.truncated_source:
            log.info("context assembled: %s", assembled.describe())
        return assembled

    def _parse(
        self, request: generator_pb2.GenerateRequest, prefix: str
    ) -> tuple[str, list[Source], list[Turn], GenerationOptions]:
        question = require_text(request.question, f"{prefix}question", max_chars=MAX_QUESTION_CHARS)
        require_range(len(request.context), f"{prefix}context (count)", 0, MAX_CONTEXT_CHUNKS)
        require_history([turn.content for turn in request.history], f"{prefix}history")
        return (
            question,
            _sources(request.context),
            _history(request.history, prefix),
            self._options(request, prefix),
        )

    def _options(self, request: generator_pb2.GenerateRequest, prefix: str) -> GenerationOptions:
        options = request.options
        temperature = options.temperature if options.HasField("temperature") else 0.0
        if not 0.0 <= temperature <= MAX_TEMPERATURE:
            raise InvalidArgument(
                f"{prefix}options.temperature must be 0..{MAX_TEMPERATURE}, got {temperature}",
                field=f"{prefix}options.temperature",
            )
        max_tokens = options.max_tokens if options.HasField("max_tokens") else self._default_max_tokens
        require_range(max_tokens, f"{prefix}options.max_tokens", 1, MAX_ANSWER_TOKENS)
        return GenerationOptions(temperature=temperature, max_tokens=max_tokens)


@asynccontextmanager
async def _closing(events: AsyncIterator[str | Answer]) -> AsyncIterator[None]:
    """Closes the backend's stream on exit, also when the caller cancels the call.

    The stream holds an HTTP response from the LLM: closed now, the server stops writing
    the answer nobody reads, instead of whenever the generator is garbage-collected.
    """
    try:
        yield
    finally:
        if isinstance(events, AsyncGenerator):
            await events.aclose()


def _sources(context: Sequence[generator_pb2.ContextChunk]) -> list[Source]:
    # Source n is context[n-1], so [n] means the same thing to every caller.
    return [
        Source(
            number=index + 1,
            document_id=chunk.document_id,
            chunk_index=chunk.chunk_index,
            title=chunk.title,
            text=chunk.text,
            score=chunk.score,
            metadata=struct_to_dict(chunk.metadata, f"context[{index}].metadata"),
        )
        for index, chunk in enumerate(context)
    ]


def _history(turns: Sequence[common_pb2.ChatTurn], prefix: str) -> list[Turn]:
    history = []
    for index, turn in enumerate(turns):
        role = _ROLES.get(turn.role)
        if role is None:
            raise InvalidArgument(
                f"{prefix}history[{index}].role must be CHAT_ROLE_USER or CHAT_ROLE_ASSISTANT",
                field=f"{prefix}history[{index}].role",
            )
        history.append(Turn(role=role, content=turn.content))  # type: ignore[arg-type]
    return history


def _response(answer: Answer, timer: StageTimer) -> generator_pb2.GenerateResponse:
    return generator_pb2.GenerateResponse(
        answer=answer.text,
        outcome=_OUTCOMES[answer.answered],
        citations=[
            generator_pb2.Citation(
                source_number=c.source_number,
                context_index=c.source_number - 1,
                document_id=c.document_id,
                chunk_index=c.chunk_index,
                quote=c.quote,
            )
            for c in answer.citations
        ],
        invalid_citation_numbers=answer.invalid_citation_numbers,
        usage=generator_pb2.TokenUsage(
            prompt_tokens=answer.usage.prompt_tokens,
            completion_tokens=answer.usage.completion_tokens,
            total_tokens=answer.usage.prompt_tokens + answer.usage.completion_tokens,
        ),
        backend=answer.backend,
        timings=timer.to_proto(),
    )
