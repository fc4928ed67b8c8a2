"""Limits of the contract that more than one service enforces.

A limit that a caller meets at the gateway and again at the service behind it
is written here once: the service that owns the data enforces it, and the
gateway checks the same number up front so its callers get the message before
any work is spent. Settings that may lower such a limit take it as their
bound (`Field(le=...)`). A limit only one service knows lives in that service.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from services.common.errors import InvalidArgument
from services.common.validation import require_range, require_text

# A document id: what the retriever stores as its key and the gateway accepts.
MAX_DOCUMENT_ID_CHARS = 256

# Hits one search may return (gateway Search/Ask, retriever Search).
MAX_TOP_K = 100

# The longest question the generator puts in a prompt; the gateway's own
# GATEWAY_MAX_QUESTION_CHARS may only lower it.
MAX_QUESTION_CHARS = 4000

# Chunking options (the embedder's Chunk, checked up front by the gateway's ingest).
MIN_CHUNK_TOKENS = 16
# The model adds two special tokens ([CLS], [SEP]) to every chunk it embeds.
SPECIAL_TOKENS = 2

# A document's metadata as compact JSON. It is copied into every chunk row and
# every search hit, so its size multiplies; the gateway's own
# GATEWAY_MAX_METADATA_BYTES may only lower it.
MAX_METADATA_BYTES = 16 * 1024

# Chat history sent with a question (gateway Ask, generator Generate): turns,
# characters per turn and characters in all. The generator keeps only what fits
# the model's window, so more would be received, stored in memory and dropped.
MAX_HISTORY_TURNS = 50
MAX_HISTORY_TURN_CHARS = 8_000
MAX_HISTORY_CHARS = 32_000

EMPTY_DELETE = "give document_ids, a filter, or both; an empty delete is refused"


def require_document_id(document_id: str, field: str) -> str:
    """A non-blank id of at most MAX_DOCUMENT_ID_CHARS characters, without NUL (PostgreSQL text has none)."""
    require_text(document_id, field, max_chars=MAX_DOCUMENT_ID_CHARS)
    if "\x00" in document_id:
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    return document_id


def require_top_k(top_k: int, field: str = "top_k") -> int:
    return require_range(top_k, field, 1, MAX_TOP_K)


def require_delete_selection(has_ids: bool, has_filter: bool) -> None:
    """An empty selection is more likely a bug than a wish to delete nothing."""
    if not has_ids and not has_filter:
        raise InvalidArgument(EMPTY_DELETE, field="document_ids")


def max_chunk_tokens(model_max_tokens: int) -> int:
    """The most tokens a chunk may have so that the model reads all of it."""
    return model_max_tokens - SPECIAL_TOKENS


def require_chunking(
    max_tokens: int | None, overlap_tokens: int | None, model_max_tokens: int, field_prefix: str = ""
) -> None:
    """Chunking options a model that reads `model_max_tokens` accepts; None is "the default".

    The overlap may be at most half a chunk, so that every chunk moves the
    window on by at least half. Without max_tokens, the overlap is bounded by
    the largest chunk the model allows.
    """
    limit = max_chunk_tokens(model_max_tokens)
    if max_tokens is not None:
        require_range(max_tokens, f"{field_prefix}max_tokens", MIN_CHUNK_TOKENS, limit)
    if overlap_tokens is not None:
        require_range(overlap_tokens, f"{field_prefix}overlap_tokens", 0, (max_tokens or limit) // 2)


def metadata_json_bytes(metadata: Mapping[str, Any]) -> int:
    """The size of metadata as compact UTF-8 JSON: what every chunk row and hit carries."""
    return len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())


def require_metadata_bytes(
    metadata: Mapping[str, Any], field: str, max_bytes: int = MAX_METADATA_BYTES, setting: str = ""
) -> None:
    """Metadata of at most max_bytes as compact JSON; `setting` names the variable that set the limit."""
    size = metadata_json_bytes(metadata)
    if size > max_bytes:
        raise InvalidArgument(
            f"{field} is {size} bytes as JSON; {metadata_limit(max_bytes, setting)}", field=field
        )


def metadata_limit(max_bytes: int, setting: str = "") -> str:
    """What metadata is accepted, for messages; with the setting that chose the limit, when one did."""
    named = f" ({setting})" if setting else ""
    return f"metadata of at most {max_bytes} bytes as compact JSON is accepted{named}"


def require_history(contents: Sequence[str], field: str = "history") -> None:
    """Chat history within MAX_HISTORY_TURNS, MAX_HISTORY_TURN_CHARS each and MAX_HISTORY_CHARS in all."""
    require_range(len(contents), f"{field} (count)", 0, MAX_HISTORY_TURNS)
    total = 0
    for index, content in enumerate(contents):
        if len(content) > MAX_HISTORY_TURN_CHARS:
            raise InvalidArgument(
                f"{field}[{index}].content must be at most {MAX_HISTORY_TURN_CHARS} characters, "
                f"got {len(content)}",
                field=f"{field}[{index}].content",
            )
        total += len(content)
    if total > MAX_HISTORY_CHARS:
        raise InvalidArgument(
            f"{field} must hold at most {MAX_HISTORY_CHARS} characters in all, got {total}", field=field
        )
