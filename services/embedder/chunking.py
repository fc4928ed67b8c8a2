"""Token-aware splitting of text into overlapping chunks.

Chunks are counted in the embedding model's own tokens, so each one fits the
model without truncation. Window ends are moved back to a sentence end when one
is near, and never split a word; consecutive chunks share `overlap` tokens so a
fact on a boundary is whole in at least one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SENTENCE_END = frozenset({".", "!", "?"})
# How far back (as a share of the window) a window end may move to land on a sentence end.
SENTENCE_SEARCH_SHARE = 0.25


@dataclass(frozen=True)
class Chunk:
    text: str
    start_char: int
    end_char: int
    token_count: int


class TokenChunker:
    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("chunking needs a fast tokenizer (it reports character offsets)")
        self._tokenizer = tokenizer

    def split(self, text: str, max_tokens: int, overlap: int) -> list[Chunk]:
        if max_tokens < 1 or not 0 <= overlap < max_tokens:
            raise ValueError(
                f"need max_tokens >= 1 and 0 <= overlap < max_tokens, got {max_tokens}, {overlap}"
            )
        encoding = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets: list[tuple[int, int]] = encoding["offset_mapping"]
        word_ids: list[int | None] = encoding.word_ids()
        chunks: list[Chunk] = []
        start = 0
        while start < len(offsets):
            end = self._window_end(text, offsets, word_ids, start, max_tokens)
            first_char, last_char = offsets[start][0], offsets[end - 1][1]
            chunks.append(Chunk(text[first_char:last_char], first_char, last_char, end - start))
            if end == len(offsets):
                break
            start = _word_start(word_ids, max(end - overlap, start + 1), floor=start + 1)
        return chunks

    def _window_end(
        self,
        text: str,
        offsets: list[tuple[int, int]],
        word_ids: list[int | None],
        start: int,
        max_tokens: int,
    ) -> int:
        end = min(start + max_tokens, len(offsets))
        if end == len(offsets):
            return end
        earliest = end - max(1, int(max_tokens * SENTENCE_SEARCH_SHARE))
        for candidate in range(end, max(earliest, start + 1) - 1, -1):
            token_start, token_end = offsets[candidate - 1]
            if text[token_start:token_end] in SENTENCE_END:
                return candidate
        return _word_start(word_ids, end, floor=start + 1)


def _word_start(word_ids: list[int | None], index: int, *, floor: int) -> int:
    """Moves index back to the first token of its word, but not below floor."""
    while index > floor and word_ids[index] is not None and word_ids[index] == word_ids[index - 1]:
        index -= 1
    return index
