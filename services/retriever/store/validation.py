"""Caller input checked before any SQL runs, and turned into what the SQL needs.

Everything in one call is checked before anything of it is written, so a bad
document in a batch leaves the whole batch unwritten. Each check raises
InvalidArgument naming the field (`documents[1].chunks[0].pages`) and, for
documents, which document and chunk, in words a caller can act on.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from services.common.errors import InvalidArgument
from services.common.limits import (
    MAX_QUESTION_CHARS,
    require_document_id,
    require_metadata_bytes,
    require_top_k,
)
from services.common.validation import require_namespace, require_range, require_text
from services.retriever.filters import Filter, validate_filter
from services.retriever.hybrid import Fusion, SearchMode, SearchQuery, require_fusion
from services.retriever.limits import (
    MAX_CHUNKS_PER_DOCUMENT,
    MAX_CONTENT_HASH_CHARS,
    MAX_FAILURE_REASON_CHARS,
    MAX_FEEDBACK_ITEMS,
    MAX_QUERY_TEXT_CHARS,
    require_ef_search,
)
from services.retriever.store.records import (
    ChunkInput,
    DocumentInput,
    Embedding,
    FailureInput,
    FeedbackInput,
)

# Chunk indexes, offsets and pages are int4 columns.
_INT32_MAX = 2**31 - 1

# index, text, start_char, end_char, pages, embedding: validated, in the order rag_chunks takes them.
PreparedChunk: TypeAlias = tuple[int, str, int, int, list[int], npt.NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class PreparedDocument:
    """A validated document, ready to write."""

    document_id: str
    content_hash: str
    title: str
    metadata: dict[str, Any]
    chunks: list[PreparedChunk]


def prepare_documents(documents: Sequence[DocumentInput], dimension: int) -> list[PreparedDocument]:
    prepared: list[PreparedDocument] = []
    seen: set[str] = set()
    for i, document in enumerate(documents):
        item = _prepare_document(document, f"documents[{i}]", dimension)
        if item.document_id in seen:
            raise InvalidArgument(
                f"document {item.document_id!r:.80} appears more than once in one upsert",
                field=f"documents[{i}].document_id",
            )
        seen.add(item.document_id)
        prepared.append(item)
    return prepared


def prepare_failures(failures: Sequence[FailureInput]) -> list[FailureInput]:
    """Every failure checked before any is written; one record per document."""
    seen: set[str] = set()
    for i, failure in enumerate(failures):
        field = f"documents[{i}]"
        document_id = require_document_id(failure.document_id, f"{field}.document_id")
        if document_id in seen:
            raise InvalidArgument(
                f"document {document_id!r:.80} appears more than once in one call",
                field=f"{field}.document_id",
            )
        seen.add(document_id)
        if "\x00" in failure.title:
            raise InvalidArgument(f"{field}.title must not contain NUL characters", field=f"{field}.title")
        _require_plain_text(failure.reason, f"{field}.reason", max_chars=MAX_FAILURE_REASON_CHARS)
    return list(failures)


def prepare_feedback(feedback: FeedbackInput) -> FeedbackInput:
    """Every judgment checked before any is stored; a chunk is judged at most once per submission.

    A judgment may name a document that is not stored (any more): feedback
    outlives the documents it judges, and whoever reads it back skips those.
    """
    _require_plain_text(feedback.question, "question", max_chars=MAX_QUESTION_CHARS)
    require_range(len(feedback.items), "items (count)", 1, MAX_FEEDBACK_ITEMS)
    seen: set[tuple[str, int]] = set()
    for i, item in enumerate(feedback.items):
        field = f"items[{i}]"
        document_id = require_document_id(item.document_id, f"{field}.document_id")
        if not 0 <= item.chunk_index <= _INT32_MAX:
            raise InvalidArgument(
                f"{field}.chunk_index must be 0..{_INT32_MAX}, got {item.chunk_index}",
                field=f"{field}.chunk_index",
            )
        if (document_id, item.chunk_index) in seen:
            raise InvalidArgument(
                f"chunk {item.chunk_index} of document {document_id!r:.80} is judged more than once in "
                "one submission; send one label per chunk",
                field=field,
            )
        seen.add((document_id, item.chunk_index))
    return feedback


def require_document_ids(document_ids: Sequence[str]) -> list[str]:
    for i, document_id in enumerate(document_ids):
        require_document_id(document_id, f"document_ids[{i}]")
    return list(document_ids)


def prepare_search(
    namespace: str,
    top_k: int,
    *,
    mode: SearchMode,
    embedding: Embedding | None,
    text: str | None,
    filter: Filter | None,
    ef_search: int,
    fusion: Fusion,
    dimension: int,
) -> SearchQuery:
    """A search with what its mode needs checked; what the mode does not use is dropped."""
    require_namespace(namespace)
    require_top_k(top_k)
    require_ef_search(ef_search)
    # Checked here, not only when compiled: a leg may find nothing to search
    # (an empty namespace, a query of stop words) and never compile it.
    if filter is not None:
        validate_filter(filter)
    return SearchQuery(
        namespace=namespace,
        mode=mode,
        top_k=top_k,
        embedding=None if mode is SearchMode.KEYWORD else _query_embedding(embedding, mode, dimension),
        text=None if mode is SearchMode.DENSE else require_query_text(text, mode.value),
        filter=filter,
        fusion=require_fusion(fusion),
        ef_search=ef_search,
    )


def require_query_text(text: str | None, mode: str, field: str = "query_text") -> str:
    """The text a search in `mode` ranks by: not blank, not huge, no NUL (which PostgreSQL refuses)."""
    if text is None or not text.strip():
        raise InvalidArgument(
            f"{field} must not be empty or blank in {mode} mode: the keyword leg ranks by it", field=field
        )
    if len(text) > MAX_QUERY_TEXT_CHARS:
        raise InvalidArgument(
            f"{field} must be at most {MAX_QUERY_TEXT_CHARS} characters, got {len(text)}", field=field
        )
    if "\x00" in text:
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    return text


def _query_embedding(
    embedding: Embedding | None, mode: SearchMode, dimension: int
) -> npt.NDArray[np.float32]:
    if embedding is None or len(embedding) == 0:
        raise InvalidArgument(
            f"query_embedding is needed in {mode.value} mode; keyword mode ranks by query_text alone",
            field="query_embedding",
        )
    return _embedding(embedding, dimension, "query_embedding", "query")


def _prepare_document(document: DocumentInput, field: str, dimension: int) -> PreparedDocument:
    document_id = require_document_id(document.document_id, f"{field}.document_id")
    what = f"document {document_id!r:.80}"
    content_hash = _require_plain_text(
        document.content_hash, f"{field}.content_hash", max_chars=MAX_CONTENT_HASH_CHARS
    )
    if "\x00" in document.title:
        raise InvalidArgument(f"{what}: title must not contain NUL characters", field=f"{field}.title")
    require_range(len(document.chunks), f"{field}.chunks (count)", 1, MAX_CHUNKS_PER_DOCUMENT)
    chunks = []
    indexes: set[int] = set()
    for j, chunk in enumerate(document.chunks):
        chunk_field = f"{field}.chunks[{j}]"
        if not 0 <= chunk.index <= _INT32_MAX:
            raise InvalidArgument(
                f"{what}: chunk index must be 0..{_INT32_MAX}, got {chunk.index}",
                field=f"{chunk_field}.index",
            )
        if chunk.index in indexes:
            raise InvalidArgument(
                f"{what}: chunk index {chunk.index} appears more than once", field=f"{chunk_field}.index"
            )
        indexes.add(chunk.index)
        chunks.append(_prepare_chunk(chunk, chunk_field, f"{what} chunk {chunk.index}", dimension))
    metadata = _require_metadata(document.metadata, f"{field}.metadata", what)
    return PreparedDocument(document_id, content_hash, document.title, metadata, chunks)


def _prepare_chunk(chunk: ChunkInput, field: str, what: str, dimension: int) -> PreparedChunk:
    if "\x00" in chunk.text:
        raise InvalidArgument(f"{what}: text must not contain NUL characters", field=f"{field}.text")
    if not 0 <= chunk.start_char <= chunk.end_char <= _INT32_MAX:
        raise InvalidArgument(
            f"{what}: start_char and end_char must satisfy 0 <= start_char <= end_char, "
            f"got {chunk.start_char} and {chunk.end_char}",
            field=f"{field}.start_char",
        )
    pages = _require_pages(chunk.pages, f"{field}.pages", what)
    embedding = _embedding(chunk.embedding, dimension, f"{field}.embedding", what)
    return chunk.index, chunk.text, chunk.start_char, chunk.end_char, pages, embedding


def _embedding(value: Embedding, dimension: int, field: str, what: str) -> npt.NDArray[np.float32]:
    """`value` as float32, with the configured dimension, finite and not all zeros."""
    try:
        # Values beyond float32's range become inf here and are refused below.
        with np.errstate(over="ignore"):
            array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what}: embedding must be a list of numbers", field=field) from None
    if array.ndim != 1 or array.shape[0] != dimension:
        got = array.shape[0] if array.ndim == 1 else f"shape {array.shape}"
        raise InvalidArgument(
            f"{what}: embedding must have {dimension} values (the configured embedding dimension), got {got}",
            field=field,
        )
    if not np.isfinite(array).all():
        raise InvalidArgument(f"{what}: embedding values must be finite (no NaN or infinity)", field=field)
    if not array.any():
        # Cosine distance to a zero vector is undefined (NaN).
        raise InvalidArgument(f"{what}: embedding must not be all zeros", field=field)
    return array


def _require_plain_text(value: str, field: str, *, max_chars: int) -> str:
    require_text(value, field, max_chars=max_chars)
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    return value


def _require_pages(pages: Sequence[int], field: str, what: str) -> list[int]:
    """Page numbers as int4 holds them: 1-based, each after the one before."""
    try:
        values = [operator.index(page) for page in pages]
    except TypeError:
        raise InvalidArgument(f"{what}: pages must be whole numbers", field=field) from None
    previous = 0
    for page in values:
        if not previous < page <= _INT32_MAX:
            raise InvalidArgument(
                f"{what}: pages must be 1-based page numbers in increasing order, got {values!r:.80}",
                field=field,
            )
        previous = page
    return values


def _require_metadata(metadata: Mapping[str, Any], field: str, what: str) -> dict[str, Any]:
    """A JSON object PostgreSQL's jsonb accepts (finite numbers, no NUL characters), of bounded size.

    The size bound is the contract's (MAX_METADATA_BYTES): metadata is copied
    into every chunk row and every hit, so a caller that skips the gateway's
    check must still meet it here.
    """
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"{what}: metadata must be an object", field=field)
    value = dict(metadata)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"{what}: metadata must hold only strings, finite numbers, bools, nulls, lists and objects",
            field=field,
        ) from None
    if _contains_nul(value):
        raise InvalidArgument(f"{what}: metadata must not contain NUL characters", field=field)
    require_metadata_bytes(value, field)
    return value


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(v) for v in value)
    return False
