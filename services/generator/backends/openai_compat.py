"""Answers with an LLM behind the OpenAI chat-completions protocol.

Any server speaking it works: OpenAI, vLLM, the llama.cpp server, Ollama. The client
is built by the caller, with its base URL, key, timeout and max_retries; the client's
own retries (exponential backoff honouring Retry-After) cover 429, 408, 409, 5xx and
connection errors, and it never retries other 4xx, which would fail the same way again.

Outcome rule: an answer counts as answered only if it cites at least one real source
and does not start with NO_ANSWER_SENTENCE. An uncited reply is not grounded in the
sources, so it is reported as a no-answer even though its text is kept as written.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import openai
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)

from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from services.generator.backends.base import no_answer
from services.generator.citations import resolve_citations
from services.generator.prompt import NO_ANSWER_SENTENCE, build_messages
from services.generator.sources import Answer, GenerationOptions, Source, Turn, Usage

log = logging.getLogger(__name__)

# Error codes and phrases with which OpenAI, vLLM and llama.cpp say the prompt is too long.
_TOO_LONG_CODES = frozenset(
    {"context_length_exceeded", "string_above_max_length", "exceed_context_size_error"}
)
_TOO_LONG_PHRASES = ("context length", "context window", "context size", "maximum context", "too many tokens")
_REFUSED_CODES = frozenset({"content_filter", "content_policy_violation"})
_STATUS_HINTS = {
    401: "check the generator's API key",
    403: "check the API key's permissions for this model",
    404: "check the model name and base URL",
}


class OpenAICompatibleBackend:
    def __init__(self, client: openai.AsyncOpenAI, model: str, *, default_max_tokens: int = 512) -> None:
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be at least 1, got {default_max_tokens}")
        self._client = client
        self._model = model
        self._default_max_tokens = default_max_tokens

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    async def answer(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Turn],
        options: GenerationOptions,
    ) -> Answer:
        if not sources:
            # Nothing to answer from: the model could only say so, at a price.
            return no_answer(self.name)
        try:
            completion = await self._client.chat.completions.create(
                model=self._model,
                messages=_chat_messages(build_messages(question, sources, history)),
                temperature=options.temperature,
                max_tokens=self._max_tokens(options),
            )
        except openai.APIError as error:
            raise self._service_error(error) from error
        text = completion.choices[0].message.content if completion.choices else None
        usage = _usage(completion.usage)
        return self._final(text or "", sources, usage)

    async def stream(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Turn],
        options: GenerationOptions,
    ) -> AsyncIterator[str | Answer]:
        if not sources:
            answer = no_answer(self.name)
            yield answer.text
            yield answer
            return
        parts: list[str] = []
        usage = Usage(prompt_tokens=0, completion_tokens=0)
        try:
            chunks = await self._client.chat.completions.create(
                model=self._model,
                messages=_chat_messages(build_messages(question, sources, history)),
                temperature=options.temperature,
                max_tokens=self._max_tokens(options),
                stream=True,
                # The usage arrives in one extra chunk, after the last content delta.
                stream_options={"include_usage": True},
            )
            # The context manager closes the HTTP response if our caller stops reading.
            async with chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = _usage(chunk.usage)
                    for choice in chunk.choices:
                        if choice.index == 0 and choice.delta.content:
                            parts.append(choice.delta.content)
                            yield choice.delta.content
        except openai.APIError as error:
            raise self._service_error(error) from error
        answer = self._final("".join(parts), sources, usage)
        if not parts:
            yield answer.text  # the no-answer sentence stands in for an empty reply
        yield answer

    def _max_tokens(self, options: GenerationOptions) -> int:
        return options.max_tokens if options.max_tokens is not None else self._default_max_tokens

    def _final(self, text: str, sources: Sequence[Source], usage: Usage) -> Answer:
        cleaned, citations, invalid = resolve_citations(text, sources)
        if not cleaned:
            return no_answer(self.name, usage)
        return Answer(
            text=cleaned,
            answered=bool(citations) and not _says_no_answer(cleaned),
            citations=citations,
            invalid_citation_numbers=invalid,
            usage=usage,
            backend=self.name,
        )

    def _service_error(self, error: openai.APIError) -> ServiceError:
        """The caller-safe error for a failed call; the upstream details go to the log only."""
        status = getattr(error, "status_code", None)
        upstream = _upstream_message(error)
        if self._client.api_key:
            # Some servers echo the key they rejected: it goes nowhere, not even to the log.
            upstream = upstream.replace(self._client.api_key, "***")
        log.warning(
            "LLM call failed: model=%s error=%s status=%s code=%s type=%s message=%.500s",
            self._model,
            type(error).__name__,
            status,
            error.code,
            error.type,
            upstream,
        )
        return _map_error(error)


def _map_error(error: openai.APIError) -> ServiceError:
    if isinstance(error, openai.APITimeoutError):
        return DeadlineExceeded("the LLM service did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return Unavailable("cannot reach the LLM service")
    if isinstance(error, openai.APIResponseValidationError):
        return FailedPrecondition("the LLM service sent a reply that is not a chat completion")
    if isinstance(error, openai.APIStatusError):
        return _map_status(error)
    # An error event in the middle of a stream: the service failed while answering.
    return Unavailable("the LLM service failed while answering")


def _map_status(error: openai.APIStatusError) -> ServiceError:
    status = error.status_code
    if status == 429:
        return ResourceExhausted("the LLM service is rate limiting requests (HTTP 429); retry later")
    if status == 408:
        return DeadlineExceeded("the LLM service timed out (HTTP 408)")
    if status >= 500 or status == 409:
        return Unavailable(f"the LLM service failed: HTTP {status}")
    if _prompt_too_long(error):
        return InvalidArgument(
            "the question, history and sources are too long for the model's context window; "
            "send fewer or shorter context chunks or history turns"
        )
    if error.code in _REFUSED_CODES:
        return InvalidArgument("the LLM refused the request under its content policy")
    hint = _STATUS_HINTS.get(status)
    return FailedPrecondition(f"the LLM rejected the request: HTTP {status}" + (f" ({hint})" if hint else ""))


def _prompt_too_long(error: openai.APIStatusError) -> bool:
    if error.status_code == 413 or error.code in _TOO_LONG_CODES or error.type in _TOO_LONG_CODES:
        return True
    message = _upstream_message(error).lower()
    return error.status_code == 400 and any(phrase in message for phrase in _TOO_LONG_PHRASES)


def _upstream_message(error: openai.APIError) -> str:
    """The upstream's own error text (for classification and the log, never for the caller)."""
    if isinstance(error.body, dict):
        message = error.body.get("message")
        if isinstance(message, str):
            return message
    return error.message


def _says_no_answer(text: str) -> bool:
    opening = " ".join(text.split()).lstrip("\"'*_ ").lower()
    return opening.startswith(NO_ANSWER_SENTENCE.lower().rstrip("."))


def _usage(usage: openai.types.CompletionUsage | None) -> Usage:
    if usage is None:
        return Usage(prompt_tokens=0, completion_tokens=0)
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def _chat_messages(messages: list[dict[str, str]]) -> list[ChatCompletionMessageParam]:
    """build_messages() output as the client's typed message parameters."""
    typed: list[ChatCompletionMessageParam] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            typed.append(ChatCompletionSystemMessageParam(role="system", content=content))
        elif role == "assistant":
            typed.append(ChatCompletionAssistantMessageParam(role="assistant", content=content))
        else:
            typed.append(ChatCompletionUserMessageParam(role="user", content=content))
    return typed
