"""Turning texts into the token ids a model reads, once per text.

Texts are tokenized when a request arrives, not inside the model call: the
token counts decide which texts share a batch, and whether a text is too long
for a request that asked not to truncate. The model then receives ids, never
text, so nothing is tokenized twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer


@dataclass(frozen=True, slots=True)
class TokenizedText:
    ids: list[int]
    type_ids: list[int]
    # The text had more tokens than the model reads; ids hold its beginning.
    truncated: bool

    def __len__(self) -> int:
        return len(self.ids)


class TextTokenizer:
    """The model's own tokenizer, cutting every text to the model's limit."""

    def __init__(self, fast_tokenizer: Any, max_tokens: int) -> None:
        # A private copy: truncation and padding are settings of a tokenizer
        # object, and the chunker uses the model's shared one without them.
        self._tokenizer = Tokenizer.from_str(fast_tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        encodings = self._tokenizer.encode_batch(list(texts))
        return [
            # With truncation on, the tokens cut off a text land in `overflowing`.
            TokenizedText(ids=e.ids, type_ids=e.type_ids, truncated=bool(e.overflowing))
            for e in encodings
        ]


def pad(batch: Sequence[TokenizedText]) -> dict[str, npt.NDArray[np.int64]]:
    """The model inputs for one batch: ids, attention mask and token types, right-padded with 0."""
    width = max(len(text) for text in batch)
    input_ids = np.zeros((len(batch), width), dtype=np.int64)
    type_ids = np.zeros((len(batch), width), dtype=np.int64)
    attention_mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, text in enumerate(batch):
        input_ids[row, : len(text)] = text.ids
        type_ids[row, : len(text)] = text.type_ids
        attention_mask[row, : len(text)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": type_ids}


def normalize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.clip(norms, 1e-12, None), dtype=np.float32)
