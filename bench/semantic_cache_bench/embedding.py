"""The claims' query embeddings from the model the embedder serves, in this process."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gateway.semantic_cache import unit
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel, InputKind

BATCH = 32


def embed_queries(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """One unit row per text, embedded as the embedder embeds a query (its prefix, truncated)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = EmbeddingModel.load(EmbedderSettings())
    rows: list[npt.NDArray[np.float32]] = []
    for start in range(0, len(texts), BATCH):
        batch = model.with_prefix(list(texts[start : start + BATCH]), InputKind.QUERY)
        rows.extend(unit(vector) for vector in model.encoder.encode(model.tokenizer.tokenize(batch)))
    return np.vstack(rows)
