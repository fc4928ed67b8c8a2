"""The sentence-transformers model run by torch: the reference engine."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from sentence_transformers import SentenceTransformer

from services.embedder.tokens import TokenizedText, normalize, pad


class TorchEncoder:
    backend = "torch"

    def __init__(self, model: SentenceTransformer) -> None:
        self._model = model
        self._device = model.device

    def encode(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        features = {name: torch.from_numpy(array).to(self._device) for name, array in pad(batch).items()}
        with torch.inference_mode():
            # The model's own modules (transformer, pooling, normalisation), fed ids.
            output = self._model(features)["sentence_embedding"]
        return normalize(output.float().cpu().numpy())
