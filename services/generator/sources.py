"""The generator's domain types: numbered sources in, a cited answer out.

Plain frozen dataclasses, so backends and tests need neither gRPC nor protobuf;
the servicer converts them to and from the wire messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Source:
    """One retrieved chunk offered to a backend, cited in answers as [number]."""

    number: int  # 1-based: the n of the [n] marker
    document_id: str
    chunk_index: int
    title: str
    text: str
    score: float  # retrieval score; higher is better
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """A prior turn of the conversation, oldest first."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class Citation:
    source_number: int
    document_id: str
    chunk_index: int
    # The source sentence(s) the answer rests on; empty when not known (LLM answers).
    quote: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Answer:
    text: str
    # False: the sources do not contain the answer.
    answered: bool
    # In order of first appearance in text, one per cited source.
    citations: list[Citation]
    # Sorted, unique [n] numbers that pointed at no source; already removed from text.
    invalid_citation_numbers: list[int]
    usage: Usage
    backend: str


@dataclass(frozen=True)
class GenerationOptions:
    temperature: float = 0.0
    # None: the backend's default.
    max_tokens: int | None = None
