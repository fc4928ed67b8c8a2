"""The values the store takes and gives back: documents to write, hits, listings, feedback.

Plain frozen dataclasses and enums, with no database or gRPC in them, so the
servicer, the rerank stage and benchmarks can use them without a connection.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Embedding: TypeAlias = Sequence[float] | npt.NDArray[np.floating[Any]]
"""A list of floats or a 1-d numpy array, as the embedder hands them over."""


@dataclass(frozen=True, slots=True)
class ChunkInput:
    index: int
    text: str
    embedding: Embedding
    start_char: int
    end_char: int
    # 1-based pages of the source file the chunk spans, increasing; empty when the source has none.
    pages: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class DocumentInput:
    document_id: str
    # Hash of the content the chunks were made from; an equal stored hash means nothing to write.
    content_hash: str
    title: str
    metadata: Mapping[str, Any]
    chunks: Sequence[ChunkInput]


class UpsertStatus(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class UpsertOutcome:
    document_id: str
    status: UpsertStatus
    chunk_count: int


@dataclass(frozen=True, slots=True)
class FailureInput:
    """A document whose ingestion failed, and why: shown to whoever lists failed documents."""

    document_id: str
    title: str
    reason: str


@dataclass(frozen=True, slots=True)
class LegScore:
    """Where a hit stood in one leg of the search: 1-based rank and that leg's score."""

    rank: int
    score: float


@dataclass(frozen=True, slots=True)
class Hit:
    document_id: str
    chunk_index: int
    text: str
    title: str
    metadata: dict[str, Any]
    score: float
    dense: LegScore | None
    keyword: LegScore | None
    pages: tuple[int, ...]
    # Set when the cross-encoder reordered the hits; score then equals it.
    rerank_score: float | None = None


@dataclass(frozen=True, slots=True)
class StoredDocument:
    document_id: str
    content_hash: str
    chunk_count: int


class DocumentState(enum.Enum):
    """Which documents a listing shows."""

    ALL = "all"
    # Stored, searchable.
    INDEXED = "indexed"
    # With a failure record (an older version may still be stored).
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DocumentFailure:
    reason: str
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    document_id: str
    # The stored title, else the one the failure was recorded with.
    title: str
    # 0, "" and None when the document is not stored, only failed.
    chunk_count: int
    content_hash: str
    updated_at: datetime | None
    failure: DocumentFailure | None


@dataclass(frozen=True, slots=True)
class DocumentPage:
    documents: list[DocumentInfo]
    # The last document id of this page when more follow, to pass as `after`; None on the last page.
    next_after: str | None


@dataclass(frozen=True, slots=True)
class Searched:
    """A search's hits, best first, and the namespace's index version in the snapshot searched."""

    hits: list[Hit]
    index_version: int


class FeedbackLabel(enum.Enum):
    """Whether a judged chunk answers the question; the value is what the database stores."""

    RELEVANT = "relevant"
    NOT_RELEVANT = "not_relevant"


class AnswerRating(enum.Enum):
    """A thumbs up or down on the answer; the value is what the database stores."""

    GOOD = "good"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    """One chunk judged for a question, named as a search hit names it."""

    document_id: str
    chunk_index: int
    label: FeedbackLabel


@dataclass(frozen=True, slots=True)
class FeedbackInput:
    """One submission: a question and its judgments, stored whole or not at all."""

    question: str
    items: Sequence[FeedbackItem]
    # None: the answer was not rated.
    answer_rating: AnswerRating | None = None


@dataclass(frozen=True, slots=True)
class Feedback:
    feedback_id: int
    question: str
    # In the order they were submitted.
    items: list[FeedbackItem]
    answer_rating: AnswerRating | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class FeedbackPage:
    feedback: list[Feedback]
    # The last feedback id of this page when more follow, to pass as `after`; None on the last page.
    next_after: int | None
