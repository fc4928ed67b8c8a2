"""OpenAICompatibleBackend against a local fake of the chat-completions HTTP API.

The fake speaks the real wire protocol (JSON replies, SSE streams, error bodies, HTTP
statuses) so the real openai client, with its real retries, runs unmodified.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.generator.backends.base import AnswerBackend
from services.generator.backends.openai_compat import OpenAICompatibleBackend
from services.generator.citations import resolve_citations
from services.generator.prompt import NO_ANSWER_SENTENCE
from services.generator.sources import Answer, GenerationOptions, Source, Turn, Usage

API_KEY = "sk-test-do-not-leak-4242"
MODEL = "fake-model"
SOURCES = [
    Source(1, "runbook", 0, "Postgres backups", "Backups run nightly at 02:00 UTC.", 0.9),
    Source(2, "retention", 3, "Retention", "Backups are retained for 30 days.", 0.8),
]
QUESTION = "When do backups run?"


@dataclass
class Reply:
    status: int = 200
    body: dict[str, Any] | None = None
    events: list[dict[str, Any]] | None = None  # sent as an SSE stream
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    # When set, the reply waits until it is set (at most a minute): a call held in flight.
    release: threading.Event | None = None


class FakeChatServer:
    """Answers POST /v1/chat/completions with queued replies; the last one repeats."""

    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply(body=completion("OK [1]."))]
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        # A short poll interval makes shutdown() quick.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def next_reply(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                fake.requests.append(json.loads(self.rfile.read(length)))
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                reply = fake.next_reply()
                time.sleep(reply.delay_s)
                if reply.release is not None:
                    reply.release.wait(60)
                # The client may have given up waiting, as the timeout test makes it.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(reply)

            def _send(self, reply: Reply) -> None:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.events is not None:
                    self._send_events(reply.events)
                else:
                    self._send_json(reply.body or {})

            def _send_json(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _send_events(self, events: list[dict[str, Any]]) -> None:
                # HTTP/1.0 without Content-Length: the body ends when the connection closes.
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def completion(content: str | None, prompt_tokens: int = 120, completion_tokens: int = 9) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chunk(content: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": choices,
        "usage": usage,
    }


def error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.fixture
def fake() -> Iterator[FakeChatServer]:
    server = FakeChatServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(fake: FakeChatServer) -> AsyncIterator[openai.AsyncOpenAI]:
    # Retry-After-ms on the fake's error replies keeps the client's real retries fast.
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key=API_KEY, max_retries=2, timeout=5) as c:
        yield c


@pytest.fixture
def backend(client: openai.AsyncOpenAI) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(client, MODEL)


async def collect(
    backend: OpenAICompatibleBackend, sources: list[Source] = SOURCES
) -> tuple[list[str], Answer]:
    events = [e async for e in backend.stream(QUESTION, sources, [], GenerationOptions())]
    *deltas, final = events
    assert isinstance(final, Answer)
    assert all(isinstance(d, str) for d in deltas)
    return [str(d) for d in deltas], final


def test_satisfies_the_backend_protocol(backend: OpenAICompatibleBackend) -> None:
    protocol: AnswerBackend = backend
    assert protocol.name == "openai:fake-model"


async def test_answer_sends_the_prompt_and_resolves_citations(
    fake: FakeChatServer, backend: OpenAICompatibleBackend
) -> None:
    fake.replies = [Reply(body=completion("Backups run nightly [1]. They are kept a month [2][7]."))]
    history = [Turn("user", "Hi"), Turn("assistant", "Hello.")]

    answer = await backend.answer(
        QUESTION, SOURCES, history, GenerationOptions(temperature=0.3, max_tokens=64)
    )

    assert answer.text == "Backups run nightly [1]. They are kept a month [2]."
    assert answer.answered
    assert [(c.source_number, c.document_id, c.chunk_index) for c in answer.citations] == [
        (1, "runbook", 0),
        (2, "retention", 3),
    ]
    assert answer.invalid_citation_numbers == [7]
    assert answer.usage == Usage(prompt_tokens=120, completion_tokens=9)
    assert answer.backend == "openai:fake-model"
    [request] = fake.requests
    assert request["model"] == MODEL
    assert request["temperature"] == 0.3
    assert request["max_tokens"] == 64
    assert not request.get("stream")
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
    assert '<source id="2" title="Retention">' in request["messages"][-1]["content"]
    assert fake.headers[0]["authorization"] == f"Bearer {API_KEY}"


async def test_default_max_tokens_applies_when_options_leave_it_unset(
    fake: FakeChatServer, client: openai.AsyncOpenAI
) -> None:
    await OpenAICompatibleBackend(client, MODEL, default_max_tokens=77).answer(
        QUESTION, SOURCES, [], GenerationOptions()
    )

    assert fake.requests[0]["max_tokens"] == 77
    assert fake.requests[0]["temperature"] == 0.0


@pytest.mark.parametrize(
    "content",
    [
        NO_ANSWER_SENTENCE,
        f"{NO_ANSWER_SENTENCE} The sources cover only backups [1].",
        "i cannot answer that from the provided sources",
        "Backups run whenever the moon is full.",  # cites nothing: not grounded
        "Backups run nightly [5].",  # cites only a source that does not exist
    ],
)
async def test_no_answer_rule(fake: FakeChatServer, backend: OpenAICompatibleBackend, content: str) -> None:
    fake.replies = [Reply(body=completion(content))]

    answer = await backend.answer(QUESTION, SOURCES, [], GenerationOptions())

    assert not answer.answered
    assert answer.text == resolve_citations(content, SOURCES)[0]


@pytest.mark.parametrize("content", [None, "", "   ", "[9]"])
async def test_an_empty_reply_becomes_the_no_answer_sentence(
    fake: FakeChatServer, backend: OpenAICompatibleBackend, content: str | None
) -> None:
    fake.replies = [Reply(body=completion(content))]

    answer = await backend.answer(QUESTION, SOURCES, [], GenerationOptions())

    assert answer.text == NO_ANSWER_SENTENCE
    assert not answer.answered
    assert answer.usage == Usage(prompt_tokens=120, completion_tokens=9)


async def test_no_sources_answers_without_calling_the_model(
    fake: FakeChatServer, backend: OpenAICompatibleBackend
) -> None:
    answer = await backend.answer(QUESTION, [], [], GenerationOptions())
    deltas, final = await collect(backend, sources=[])

    assert answer.text == final.text == NO_ANSWER_SENTENCE
    assert deltas == [NO_ANSWER_SENTENCE]
    assert not answer.answered
    assert fake.requests == []


async def test_stream_yields_deltas_then_the_final_answer(
    fake: FakeChatServer, backend: OpenAICompatibleBackend
) -> None:
    pieces = ["Backups run ", "nightly [", "1] at 02:00", " UTC [4]."]
    usage = {"prompt_tokens": 200, "completion_tokens": 12, "total_tokens": 212}
    fake.replies = [Reply(events=[chunk(piece) for piece in pieces] + [chunk(usage=usage)])]

    deltas, final = await collect(backend)

    assert deltas == pieces
    assert (
        final.text
        == resolve_citations("".join(deltas), SOURCES)[0]
        == "Backups run nightly [1] at 02:00 UTC."
    )
    assert final.answered
    assert [c.source_number for c in final.citations] == [1]
    assert final.invalid_citation_numbers == [4]
    assert final.usage == Usage(prompt_tokens=200, completion_tokens=12)
    [request] = fake.requests
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}


async def test_stream_without_usage_reports_zero(
    fake: FakeChatServer, backend: OpenAICompatibleBackend
) -> None:
    fake.replies = [Reply(events=[chunk("Nightly [1].")])]

    deltas, final = await collect(backend)

    assert "".join(deltas) == final.text == "Nightly [1]."
    assert final.usage == Usage(prompt_tokens=0, completion_tokens=0)


async def test_stream_of_an_empty_reply_yields_the_no_answer_sentence(
    fake: FakeChatServer, backend: OpenAICompatibleBackend
) -> None:
    fake.replies = [
        Reply(events=[chunk(usage={"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5})])
    ]

    deltas, final = await collect(backend)

    assert deltas == [NO_ANSWER_SENTENCE]
    assert final.text == NO_ANSWER_SENTENCE
    assert not final.answered


async def test_an_error_event_inside_a_stream_is_unavailable(
    fake: FakeChatServer, backend: OpenAICompatibleBackend
) -> None:
    fake.replies = [Reply(events=[chunk("Backups "), error_body("model crashed", "server_error")])]

    with pytest.raises(Unavailable, match="failed while answering"):
        await collect(backend)


RETRIED = {"retry-after-ms": "1"}


@pytest.mark.parametrize(
    ("reply", "expected_error", "expected_attempts"),
    [
        # 429 and 5xx: the client's own retries (max_retries=2) run first.
        (
            Reply(429, error_body("Rate limit reached", "requests", "rate_limit_exceeded"), headers=RETRIED),
            ResourceExhausted,
            3,
        ),
        (Reply(500, error_body("boom", "server_error"), headers=RETRIED), Unavailable, 3),
        (Reply(503, error_body("overloaded", "server_error"), headers=RETRIED), Unavailable, 3),
        # Other 4xx fail the same way every time, so they are never retried.
        (
            Reply(400, error_body("Unsupported value: 'temperature'", "invalid_request_error")),
            FailedPrecondition,
            1,
        ),
        (
            Reply(404, error_body("The model does not exist", "invalid_request_error", "model_not_found")),
            FailedPrecondition,
            1,
        ),
        (
            Reply(
                400,
                error_body(
                    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
                    "invalid_request_error",
                    "context_length_exceeded",
                ),
            ),
            InvalidArgument,
            1,
        ),
        (
            Reply(
                400, error_body("the request exceeds the available context size", "exceed_context_size_error")
            ),
            InvalidArgument,
            1,
        ),
    ],
)
async def test_http_errors_map_to_service_errors(
    fake: FakeChatServer,
    backend: OpenAICompatibleBackend,
    reply: Reply,
    expected_error: type[ServiceError],
    expected_attempts: int,
) -> None:
    fake.replies = [reply]

    with pytest.raises(expected_error) as raised:
        await backend.answer(QUESTION, SOURCES, [], GenerationOptions())
    assert len(fake.requests) == expected_attempts

    fake.requests.clear()
    with pytest.raises(expected_error):
        await collect(backend)
    assert len(fake.requests) == expected_attempts
    # The upstream's own words stay in the log; the caller gets ours.
    assert reply.body is not None
    assert reply.body["error"]["message"] not in raised.value.message


async def test_a_rejected_key_never_reaches_the_error_message(
    fake: FakeChatServer, backend: OpenAICompatibleBackend, caplog: pytest.LogCaptureFixture
) -> None:
    fake.replies = [
        Reply(
            401,
            error_body(f"Incorrect API key provided: {API_KEY}.", "invalid_request_error", "invalid_api_key"),
        )
    ]

    with pytest.raises(FailedPrecondition) as raised:
        await backend.answer(QUESTION, SOURCES, [], GenerationOptions())

    assert raised.value.message == "the LLM rejected the request: HTTP 401 (check the generator's API key)"
    assert API_KEY not in caplog.text
    assert "invalid_api_key" in caplog.text
    assert len(fake.requests) == 1


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now.
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0
    ) as c:
        backend = OpenAICompatibleBackend(c, MODEL)

        with pytest.raises(Unavailable, match="cannot reach"):
            await backend.answer(QUESTION, SOURCES, [], GenerationOptions())
        with pytest.raises(Unavailable, match="cannot reach"):
            await collect(backend)


async def test_a_slow_service_is_deadline_exceeded(fake: FakeChatServer) -> None:
    fake.replies = [Reply(body=completion("Late [1]."), delay_s=0.5)]
    async with openai.AsyncOpenAI(base_url=fake.base_url, api_key=API_KEY, max_retries=0, timeout=0.1) as c:
        backend = OpenAICompatibleBackend(c, MODEL)

        with pytest.raises(DeadlineExceeded):
            await backend.answer(QUESTION, SOURCES, [], GenerationOptions())
