"""Context assembly: ordering, dedup, the token budget, and the servicer's use of it.

Token counts come from the real tokenizer the service uses by default (the one shipped
with the embedding model), so the budget arithmetic here is the service's own.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rag.common.v1 import common_pb2
from rag.generator.v1 import generator_pb2, generator_pb2_grpc
from services.common.errors_interceptor import ErrorInterceptor
from services.common.limits import MAX_HISTORY_TURN_CHARS, MAX_HISTORY_TURNS
from services.generator.backends.extractive import ExtractiveBackend
from services.generator.context import (
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_PRIMING_TOKENS,
    AssembledContext,
    ContextAssembler,
    DroppedSource,
    DropReason,
    PromptTooLong,
    TokenBudget,
)
from services.generator.prompt import build_messages
from services.generator.servicer import GeneratorServicer
from services.generator.sources import Source, Turn
from services.generator.tokens import (
    HuggingFaceTokenCounter,
    TokenCounter,
    default_tokenizer_path,
    tokenizer_file,
)

QUESTION = "How long are backups kept?"
BACKUPS = "Backups of the database run nightly at 02:00 UTC. They are kept for 30 days in the bucket."
COFFEE = "Use 60 grams of coffee per litre of water. Descale the machine every month."
ONCALL = "Page the platform team if three nodes are NotReady for ten minutes."


def source(number: int, text: str, score: float, document_id: str | None = None) -> Source:
    return Source(
        number=number,
        document_id=document_id or f"doc-{number}",
        chunk_index=0,
        title=f"Title {number}",
        text=text,
        score=score,
    )


def sentences(count: int, topic: str = "backup") -> str:
    return " ".join(f"Sentence {i} says the {topic} policy rule number {i} applies." for i in range(count))


@pytest.fixture(scope="module")
def counter() -> HuggingFaceTokenCounter:
    return HuggingFaceTokenCounter.from_path(default_tokenizer_path())


def budgeted(counter: TokenCounter, window: int, history_share: float = 0.25) -> ContextAssembler:
    return ContextAssembler(budget=TokenBudget(counter, window, history_share))


def prompt_tokens(counter: TokenCounter, question: str, context: AssembledContext) -> int:
    """The prompt's tokens counted from scratch, as the assembler documents its estimate."""
    messages = build_messages(question, context.sources, context.history)
    counts = counter.count_many([m["content"] for m in messages])
    return sum(counts) + MESSAGE_OVERHEAD_TOKENS * len(messages) + REPLY_PRIMING_TOKENS


# --- tokens.py ---


def test_counts_are_not_truncated_to_the_embedding_models_length(counter: HuggingFaceTokenCounter) -> None:
    # The shipped tokenizer.json truncates at 128 tokens and pads: both must be off.
    assert counter.count("Backups run nightly.") == 5
    assert counter.count(sentences(100)) > 1000
    assert counter.count("") == 0


def test_the_margin_scales_every_count(counter: HuggingFaceTokenCounter) -> None:
    padded = HuggingFaceTokenCounter.from_path(default_tokenizer_path(), margin=0.15)
    texts = [BACKUPS, COFFEE, sentences(30)]

    assert padded.count_many(texts) == [math.ceil(n * 1.15) for n in counter.count_many(texts)]
    assert counter.count_many(texts) == [counter.count(text) for text in texts]


def test_the_tokenizer_path_may_name_the_file_or_its_folder(tmp_path: Path) -> None:
    folder = default_tokenizer_path()

    assert tokenizer_file(folder) == folder / "tokenizer.json"
    assert tokenizer_file(folder / "tokenizer.json") == folder / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        tokenizer_file(tmp_path)


# --- ordering and dedup (no budget) ---


def test_sources_go_best_first_and_keep_their_request_numbers() -> None:
    sources = [source(1, COFFEE, 0.2), source(2, BACKUPS, 0.9), source(3, ONCALL, 0.5)]

    context = ContextAssembler().assemble(QUESTION, sources, [], max_tokens=100)

    assert [s.number for s in context.sources] == [2, 3, 1]
    assert context.sources[0] == sources[1]
    assert context.dropped_sources == []
    assert context.prompt_tokens_estimate is None


def test_equal_scores_keep_request_order() -> None:
    sources = [source(1, COFFEE, 0.5), source(2, BACKUPS, 0.5), source(3, ONCALL, 0.7)]

    context = ContextAssembler().assemble(QUESTION, sources, [], max_tokens=100)

    assert [s.number for s in context.sources] == [3, 1, 2]


def test_near_duplicates_of_a_better_source_are_dropped() -> None:
    overlapping = BACKUPS + " Restores"  # one word more: Jaccard 17/18 = 0.94
    sources = [
        source(1, COFFEE, 0.3),
        source(2, overlapping, 0.7, document_id="runbook-copy"),
        source(3, BACKUPS, 0.8),
        source(4, BACKUPS.upper(), 0.1),  # the same words, shouted
    ]

    context = ContextAssembler().assemble(QUESTION, sources, [], max_tokens=100)

    assert [s.number for s in context.sources] == [3, 1]
    assert context.dropped_sources == [
        DroppedSource(2, DropReason.DUPLICATE, duplicate_of=3),
        DroppedSource(4, DropReason.DUPLICATE, duplicate_of=3),
    ]


def test_the_dedup_threshold_decides_how_near_is_a_duplicate() -> None:
    half = "Backups of the database run nightly at 02:00 UTC. Restores take an hour on the replica."
    sources = [source(1, BACKUPS, 0.9), source(2, half, 0.8)]

    assert len(ContextAssembler(dedup_threshold=0.9).assemble(QUESTION, sources, [], 100).sources) == 2
    assert len(ContextAssembler(dedup_threshold=0.4).assemble(QUESTION, sources, [], 100).sources) == 1


def test_sources_without_words_are_not_duplicates_of_each_other() -> None:
    sources = [source(1, "", 0.9), source(2, "  ", 0.8)]

    context = ContextAssembler().assemble(QUESTION, sources, [], max_tokens=100)

    assert [s.number for s in context.sources] == [1, 2]


def test_history_keeps_the_newest_turns_and_never_opens_with_an_answer() -> None:
    history = [
        Turn("user", "q1"),
        Turn("assistant", "a1"),
        Turn("user", "q2"),
        Turn("assistant", "a2"),
        Turn("user", "q3"),
    ]

    context = ContextAssembler(history_max_turns=4).assemble(QUESTION, [], history, max_tokens=100)
    no_history = ContextAssembler(history_max_turns=0).assemble(QUESTION, [], history, max_tokens=100)

    # The newest four start with a1, whose question q1 is gone: a1 goes too.
    assert context.history == history[2:]
    assert context.dropped_turns == 2
    assert no_history.history == []
    assert no_history.dropped_turns == 5


# --- the token budget ---


def test_everything_fits_a_large_window(counter: HuggingFaceTokenCounter) -> None:
    sources = [source(1, BACKUPS, 0.9), source(2, COFFEE, 0.5)]
    history = [Turn("user", "Hi"), Turn("assistant", "Hello.")]

    context = budgeted(counter, 4096).assemble(QUESTION, sources, history, max_tokens=512)

    assert [s.number for s in context.sources] == [1, 2]
    assert context.history == history
    assert context.prompt_tokens_estimate == prompt_tokens(counter, QUESTION, context)


def test_sources_that_do_not_fit_are_dropped_and_smaller_ones_still_fill_in(
    counter: HuggingFaceTokenCounter,
) -> None:
    window, max_tokens = 1024, 200
    sources = [
        source(1, sentences(25), 0.9),  # ~350 tokens
        source(2, sentences(40, "coffee"), 0.8),  # ~550: no longer fits after source 1
        source(3, COFFEE, 0.7),  # small: fits in what is left
    ]

    context = budgeted(counter, window).assemble(QUESTION, sources, [], max_tokens=max_tokens)

    assert [s.number for s in context.sources] == [1, 3]
    assert context.dropped_sources == [DroppedSource(2, DropReason.OVER_BUDGET)]
    assert context.truncated_source is None
    estimate = context.prompt_tokens_estimate
    assert estimate == prompt_tokens(counter, QUESTION, context)
    assert estimate + max_tokens <= window


def test_a_best_source_too_long_for_the_window_is_cut_at_a_sentence_end(
    counter: HuggingFaceTokenCounter,
) -> None:
    window, max_tokens = 600, 100
    long_text = sentences(80)  # ~1100 tokens
    sources = [source(1, COFFEE, 0.3), source(2, long_text, 0.9)]

    context = budgeted(counter, window).assemble(QUESTION, sources, [], max_tokens=max_tokens)

    best = context.sources[0]
    assert best.number == 2
    assert context.truncated_source == 2
    assert long_text.startswith(best.text)
    assert best.text.endswith("applies.")
    assert len(best.text) < len(long_text)
    estimate = context.prompt_tokens_estimate
    assert estimate is not None
    assert estimate + max_tokens <= window
    # Cut to fill the space: one more sentence would not have fitted.
    assert estimate + max_tokens + counter.count(" Sentence 99 says the backup policy rule applies.") > (
        window - 2 * MESSAGE_OVERHEAD_TOKENS
    )


def test_a_best_source_without_a_sentence_end_that_fits_is_dropped(counter: HuggingFaceTokenCounter) -> None:
    unbroken = " ".join(["backup"] * 2000)
    sources = [source(1, unbroken, 0.9), source(2, COFFEE, 0.5)]

    context = budgeted(counter, 600).assemble(QUESTION, sources, [], max_tokens=100)

    assert [s.number for s in context.sources] == [2]
    assert context.dropped_sources == [DroppedSource(1, DropReason.OVER_BUDGET)]
    assert context.truncated_source is None


def test_history_takes_at_most_its_share_and_loses_the_oldest_turns_first(
    counter: HuggingFaceTokenCounter,
) -> None:
    history = [
        Turn("user" if i % 2 == 0 else "assistant", f"Turn {i}: " + sentences(3, f"topic{i}"))
        for i in range(10)
    ]
    window, max_tokens, share = 1024, 100, 0.25

    context = budgeted(counter, window, share).assemble(
        QUESTION, [source(1, BACKUPS, 0.9)], history, max_tokens
    )

    assert 0 < len(context.history) < len(history)
    assert context.history == history[-len(context.history) :]
    assert context.history[0].role == "user"
    assert context.dropped_turns == len(history) - len(context.history)
    fixed = prompt_tokens(counter, QUESTION, AssembledContext([], [], [], 0, None, None))
    history_tokens = sum(counter.count(t.content) + MESSAGE_OVERHEAD_TOKENS for t in context.history)
    assert history_tokens <= (window - max_tokens - fixed) * share
    assert [s.number for s in context.sources] == [1]


def test_a_question_and_answer_reserve_larger_than_the_window_is_refused(
    counter: HuggingFaceTokenCounter,
) -> None:
    with pytest.raises(PromptTooLong, match="context window of 1024 tokens"):
        budgeted(counter, 1024).assemble(QUESTION, [source(1, BACKUPS, 0.9)], [], max_tokens=1000)


def test_describe_says_what_was_dropped_and_why(counter: HuggingFaceTokenCounter) -> None:
    sources = [source(1, sentences(80), 0.9), source(2, sentences(80), 0.8), source(3, COFFEE, 0.1)]

    line = budgeted(counter, 600).assemble(QUESTION, sources, [], max_tokens=100).describe()

    assert "sources kept [1]" in line
    assert "2 (duplicate of 1), 3 (over_budget)" in line
    assert "source 1 cut to fit" in line
    assert "prompt tokens ~" in line


# --- the servicer ---


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def generator(
    spans: InMemorySpanExporter, counter: HuggingFaceTokenCounter
) -> AsyncIterator[generator_pb2_grpc.GeneratorServiceAsyncStub]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    # The extractive backend with a budget the service would only give an LLM: the
    # servicer does not care which backend it feeds, and this one needs no server.
    servicer = GeneratorServicer(
        ExtractiveBackend(),
        budgeted(counter, 1024),
        default_max_tokens=100,
        tracer=provider.get_tracer("test"),
    )
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield generator_pb2_grpc.GeneratorServiceStub(channel)
    await server.stop(None)


def chunk(text: str, score: float, document_id: str) -> generator_pb2.ContextChunk:
    return generator_pb2.ContextChunk(document_id=document_id, title=document_id, text=text, score=score)


REQUEST = generator_pb2.GenerateRequest(
    question="When do database backups run?",
    context=[
        chunk(COFFEE, 0.2, "coffee"),
        chunk(BACKUPS, 0.8, "runbook"),
        chunk(BACKUPS, 0.6, "runbook-copy"),
        chunk(sentences(60, "coffee"), 0.4, "long"),
    ],
)


async def test_generate_answers_from_the_kept_sources_with_request_numbers(
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub, spans: InMemorySpanExporter
) -> None:
    response = await generator.Generate(REQUEST)

    assert response.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    # The runbook is request context[1]: source [2], whatever was dropped around it.
    assert "[2]" in response.answer
    assert [(c.source_number, c.context_index, c.document_id) for c in response.citations] == [
        (2, 1, "runbook")
    ]
    [span] = [s for s in spans.get_finished_spans() if s.name == "rag.generator.generate"]
    attributes = dict(span.attributes or {})
    assert attributes["rag.generator.sources"] == 4
    assert attributes["rag.generator.sources_kept"] == 2  # runbook and coffee
    assert attributes["rag.generator.sources_dropped"] == 2  # the copy, and the long one
    estimate = attributes["rag.generator.prompt_tokens_estimate"]
    assert isinstance(estimate, int)
    assert 0 < estimate <= 1024 - 100


async def test_generate_stream_uses_the_same_context(
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub, spans: InMemorySpanExporter
) -> None:
    events = [
        event
        async for event in generator.GenerateStream(generator_pb2.GenerateStreamRequest(request=REQUEST))
    ]

    final = events[-1].final
    assert "".join(event.delta.text for event in events[:-1]) == final.answer
    assert [c.source_number for c in final.citations] == [2]
    [span] = [s for s in spans.get_finished_spans() if s.name == "rag.generator.generate"]
    assert dict(span.attributes or {})["rag.generator.sources_kept"] == 2


async def test_an_answer_reserve_beyond_the_window_is_invalid_argument(
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub,
) -> None:
    request = generator_pb2.GenerateRequest()
    request.CopyFrom(REQUEST)
    request.options.max_tokens = 2000

    raised, streamed = await _refusals(generator, request)

    assert raised.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context window of 1024 tokens" in (raised.details() or "")
    assert streamed.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _refusals(
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub, request: generator_pb2.GenerateRequest
) -> tuple[grpc.aio.AioRpcError, grpc.aio.AioRpcError]:
    """How Generate and GenerateStream refuse `request`."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await generator.Generate(request)
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in generator.GenerateStream(generator_pb2.GenerateStreamRequest(request=request)):
            pass
    return raised.value, streamed.value


async def test_old_history_turns_are_dropped_not_refused(
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub, spans: InMemorySpanExporter
) -> None:
    request = generator_pb2.GenerateRequest()
    request.CopyFrom(REQUEST)
    roles = [common_pb2.CHAT_ROLE_USER, common_pb2.CHAT_ROLE_ASSISTANT]
    request.history.extend(
        common_pb2.ChatTurn(role=roles[i % 2], content=sentences(10, f"turn{i}")) for i in range(20)
    )

    response = await generator.Generate(request)

    assert response.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    [span] = [s for s in spans.get_finished_spans() if s.name == "rag.generator.generate"]
    dropped = dict(span.attributes or {})["rag.generator.history_turns_dropped"]
    assert isinstance(dropped, int)
    assert dropped > 10


def _with_history(*contents: str) -> generator_pb2.GenerateRequest:
    request = generator_pb2.GenerateRequest()
    request.CopyFrom(REQUEST)
    roles = [common_pb2.CHAT_ROLE_USER, common_pb2.CHAT_ROLE_ASSISTANT]
    request.history.extend(
        common_pb2.ChatTurn(role=roles[i % 2], content=content) for i, content in enumerate(contents)
    )
    return request


@pytest.mark.parametrize(
    ("history", "message"),
    [
        pytest.param(["hi"] * (MAX_HISTORY_TURNS + 1), "history (count) must be 0..50, got 51", id="turns"),
        pytest.param(
            ["hi", "x" * (MAX_HISTORY_TURN_CHARS + 1)],
            "history[1].content must be at most 8000 characters, got 8001",
            id="one turn",
        ),
        pytest.param(
            ["x" * MAX_HISTORY_TURN_CHARS] * 4 + ["x"],
            "history must hold at most 32000 characters in all, got 32001",
            id="characters in all",
        ),
    ],
)
async def test_history_beyond_its_limits_is_refused(
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub, history: list[str], message: str
) -> None:
    raised, streamed = await _refusals(generator, _with_history(*history))

    assert raised.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.details() == message
    assert streamed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert streamed.details() == f"request.{message}"


async def test_history_at_its_limits_is_accepted(
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub,
) -> None:
    at_the_limits = ["x" * MAX_HISTORY_TURN_CHARS] * 4 + [""] * (MAX_HISTORY_TURNS - 4)

    response = await generator.Generate(_with_history(*at_the_limits))

    assert response.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
