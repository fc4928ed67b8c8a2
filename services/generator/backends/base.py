"""What every answer backend offers the servicer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from services.generator.prompt import NO_ANSWER_SENTENCE
from services.generator.sources import Answer, GenerationOptions, Source, Turn, Usage


class AnswerBackend(Protocol):
    @property
    def name(self) -> str:
        """Reported as Answer.backend, e.g. "extractive" or "openai:<model>"."""
        ...

    async def answer(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Turn],
        options: GenerationOptions,
    ) -> Answer:
        """The whole answer at once. Sources are numbered and sent best first."""
        ...

    def stream(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Turn],
        options: GenerationOptions,
    ) -> AsyncIterator[str | Answer]:
        """Text deltas as they are written, then exactly one final Answer.

        The final Answer is what answer() would return. Its text is the concatenation
        of the deltas, except that a backend that checks citations only once the text is
        complete (an LLM) removes the markers that point at no source and the whitespace
        at either end; those removals are listed in invalid_citation_numbers.
        """
        ...


def no_answer(backend: str, usage: Usage | None = None) -> Answer:
    """The reply for a question the sources do not answer."""
    return Answer(
        text=NO_ANSWER_SENTENCE,
        answered=False,
        citations=[],
        invalid_citation_numbers=[],
        usage=usage or Usage(prompt_tokens=0, completion_tokens=0),
        backend=backend,
    )
