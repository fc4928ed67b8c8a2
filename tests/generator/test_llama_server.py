"""OpenAICompatibleBackend and the generator service against a real LLM server.

llama-cpp-python's OpenAI-compatible server with SmolLM2-135M (tests/llama_server.py).
The model is tiny, so only the structure of its answers is checked, never their content.
Cancellation is proven by the server itself: it logs a client that left mid-answer, and
with --interrupt_requests=false nothing else makes it do so.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass

import grpc
import httpx2
import openai
import pytest

from rag.generator.v1 import generator_pb2, generator_pb2_grpc
from rag_cli.stack import Stack, free_port
from services.common.internal_auth import TokenSigner, signing_interceptors
from services.common.registry import GENERATOR
from services.generator.backends.openai_compat import OpenAICompatibleBackend
from services.generator.citations import resolve_citations
from services.generator.sources import Answer, GenerationOptions, Source
from tests.conftest import SAMPLES
from tests.llama_server import LlamaServer

# Not skipped when the server is missing: `make install` installs it, and a
# missing install must fail loudly rather than pass by skipping.
pytestmark = pytest.mark.slow

SOURCES = [
    Source(
        1,
        "runbook",
        0,
        "Postgres backups",
        "Backups of the PostgreSQL database run nightly at 02:00 UTC with pg_basebackup. "
        "WAL segments are archived every five minutes.",
        0.9,
    ),
    Source(
        2,
        "retention",
        3,
        "Retention",
        "Backups are retained for 30 days. Monthly backups are kept a year.",
        0.8,
    ),
]
QUESTION = "When do backups run?"
# At temperature 0 the model answers this at length, so a stream cut after its first
# delta is cut long before the model would have stopped.
LONG_QUESTION = "Describe every detail of the backup procedure, step by step, at great length."
LONG_ANSWER_TOKENS = 200


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with LlamaServer(tmp_path_factory.mktemp("llama") / "llama-server.log") as server:
        yield server


@pytest.fixture
async def client(llama: LlamaServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=llama.base_url, api_key="unused", max_retries=0, timeout=300) as c:
        yield c


@pytest.fixture
def backend(client: openai.AsyncOpenAI, llama: LlamaServer) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(client, llama.model)


async def test_stream_deltas_join_to_the_final_answer(backend: OpenAICompatibleBackend) -> None:
    events = [e async for e in backend.stream(QUESTION, SOURCES, [], GenerationOptions(max_tokens=32))]

    *deltas, final = events
    assert isinstance(final, Answer)
    assert deltas
    assert all(isinstance(delta, str) and delta for delta in deltas)
    # As the backend protocol says: the deltas joined, less the markers that point at no
    # source and the whitespace at either end; the removed numbers are reported.
    text, citations, invalid = resolve_citations("".join(map(str, deltas)), SOURCES)
    assert final.text == text
    assert final.invalid_citation_numbers == invalid
    assert [c.source_number for c in final.citations] == [c.source_number for c in citations]
    assert final.backend == backend.name
    # The usage of a stream is what the server sends: llama-cpp-python sends none in a
    # stream (it ignores stream_options.include_usage), so it is not asserted here.


async def test_answer_reports_usage(backend: OpenAICompatibleBackend, llama: LlamaServer) -> None:
    answer = await backend.answer(QUESTION, SOURCES, [], GenerationOptions(max_tokens=16))

    assert answer.text
    assert answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 16
    assert {c.source_number for c in answer.citations} <= {1, 2}
    assert answer.backend == f"openai:{llama.model}"


async def cancel_after_first_delta(backend: OpenAICompatibleBackend) -> None:
    """The consumer's task is cancelled while it waits for the next delta."""
    first_delta = asyncio.Event()

    async def consume() -> None:
        options = GenerationOptions(max_tokens=LONG_ANSWER_TOKENS)
        async for _ in backend.stream(LONG_QUESTION, SOURCES, [], options):
            first_delta.set()

    consumer = asyncio.create_task(consume())
    await first_delta.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer


async def stop_reading_after_first_delta(backend: OpenAICompatibleBackend) -> None:
    """The consumer stops reading and closes the stream, as a gRPC handler being torn down does."""
    options = GenerationOptions(max_tokens=LONG_ANSWER_TOKENS)
    events = backend.stream(LONG_QUESTION, SOURCES, [], options)
    assert isinstance(events, AsyncGenerator)
    async with aclosing(events):
        async for _ in events:
            break


@pytest.mark.parametrize("stop", [cancel_after_first_delta, stop_reading_after_first_delta])
async def test_a_consumer_that_stops_closes_the_http_stream(
    llama: LlamaServer, stop: Callable[[OpenAICompatibleBackend], Awaitable[None]]
) -> None:
    responses: list[httpx2.Response] = []

    async def remember(response: httpx2.Response) -> None:
        responses.append(response)

    http_client = httpx2.AsyncClient(event_hooks={"response": [remember]})
    async with openai.AsyncOpenAI(
        base_url=llama.base_url, api_key="unused", max_retries=0, timeout=300, http_client=http_client
    ) as client:
        backend = OpenAICompatibleBackend(client, llama.model)
        disconnects = llama.disconnects()

        await stop(backend)

        [response] = responses
        assert response.is_closed
        # The server noticed the client leave and stopped writing the answer.
        await asyncio.to_thread(llama.wait_for_disconnects, disconnects + 1)
        # ... and takes the next request.
        answer = await backend.answer(QUESTION, SOURCES, [], GenerationOptions(max_tokens=8))
        assert answer.usage.completion_tokens > 0


@dataclass(frozen=True)
class SignedTarget:
    """A service's address, and the signer its calls need (services/common/internal_auth.py)."""

    target: str
    signer: TokenSigner

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(
            self.target, interceptors=signing_interceptors(self.signer, GENERATOR.name)
        )


@pytest.fixture(scope="module")
def generator_target(llama: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SignedTarget]:
    """The generator service as a process, with the openai backend pointed at the llama server."""
    services = Stack(data_dir=tmp_path_factory.mktemp("generator"), ports={"generator": free_port()})
    services.log_path("generator").parent.mkdir(parents=True)
    environment = {
        **os.environ,
        **services.internal_auth_environment(),
        "GENERATOR_PORT": str(services.ports["generator"]),
        "GENERATOR_GRACE_PERIOD_S": "2",
        "GENERATOR_BACKEND": "openai",
        "GENERATOR_OPENAI_BASE_URL": llama.base_url,
        "GENERATOR_OPENAI_MODEL": llama.model,
        "GENERATOR_OPENAI_MAX_RETRIES": "0",
        "GENERATOR_OPENAI_TIMEOUT_S": "300",
        "GENERATOR_CONTEXT_WINDOW_TOKENS": str(llama.n_ctx),
        "GENERATOR_DEFAULT_MAX_TOKENS": "64",
    }
    try:
        services.start_service("generator", "services.generator", environment)
        services.wait_until_serving("generator", deadline=time.monotonic() + 60)
        yield SignedTarget(services.target("generator"), services.signer())
    finally:
        services.stop()


def context_chunks() -> list[generator_pb2.ContextChunk]:
    return [
        generator_pb2.ContextChunk(
            document_id=s.document_id, chunk_index=s.chunk_index, title=s.title, text=s.text, score=s.score
        )
        for s in SOURCES
    ]


async def test_a_cancelled_generate_stream_stops_the_llm_and_the_generator_keeps_serving(
    llama: LlamaServer, generator_target: SignedTarget
) -> None:
    async with generator_target.channel() as channel:
        generator = generator_pb2_grpc.GeneratorServiceStub(channel)
        disconnects = llama.disconnects()
        call = generator.GenerateStream(
            generator_pb2.GenerateStreamRequest(
                request=generator_pb2.GenerateRequest(
                    question=LONG_QUESTION,
                    context=context_chunks(),
                    options=generator_pb2.GenerationOptions(max_tokens=LONG_ANSWER_TOKENS),
                )
            ),
            timeout=300,
        )
        first = await call.read()
        assert isinstance(first, generator_pb2.GenerateStreamResponse)
        assert first.HasField("delta")
        assert first.delta.text

        call.cancel()

        assert call.cancelled()
        await asyncio.to_thread(llama.wait_for_disconnects, disconnects + 1)
        response = await generator.Generate(
            generator_pb2.GenerateRequest(
                question=QUESTION,
                context=context_chunks(),
                options=generator_pb2.GenerationOptions(max_tokens=16),
            ),
            timeout=300,
        )
    assert response.backend == f"openai:{llama.model}"
    assert response.answer
    assert response.outcome in (generator_pb2.ANSWER_OUTCOME_ANSWERED, generator_pb2.ANSWER_OUTCOME_NO_ANSWER)
    assert response.usage.prompt_tokens > 0
    assert 0 < response.usage.completion_tokens <= 16
    assert {c.source_number for c in response.citations} <= {1, 2}


def sample_chunks(size: int = 1400) -> list[generator_pb2.ContextChunk]:
    """Two chunks of each sample document: about 330 tokens each, 2600 in all."""
    chunks: list[generator_pb2.ContextChunk] = []
    for path in sorted(SAMPLES.glob("*")):
        text = path.read_text()
        chunks.extend(
            generator_pb2.ContextChunk(
                document_id=path.name, chunk_index=index, title=path.stem, text=text[start : start + size]
            )
            for index, start in enumerate((0, size))
        )
    return chunks


async def test_sources_beyond_the_window_are_dropped_until_the_prompt_fits_the_model(
    llama: LlamaServer, generator_target: SignedTarget
) -> None:
    context = sample_chunks()
    request = generator_pb2.GenerateRequest(
        question=QUESTION, context=context, options=generator_pb2.GenerationOptions(max_tokens=8)
    )

    async with generator_target.channel() as channel:
        response = await generator_pb2_grpc.GeneratorServiceStub(channel).Generate(request, timeout=300)

    # Sent whole, the sources alone would overflow the model's 2048 tokens and the server
    # would refuse the request. Counted with the approximate tokenizer plus its margin,
    # what is sent fits the real model's window and still fills most of it.
    usage = response.usage
    assert usage.prompt_tokens + usage.completion_tokens <= llama.n_ctx
    assert usage.prompt_tokens > llama.n_ctx // 2
    assert {c.source_number for c in response.citations} <= set(range(1, len(context) + 1))
