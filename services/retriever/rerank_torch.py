"""The rerank model run by sentence-transformers' CrossEncoder under torch: the fallback backend.

It serves a folder that has no ONNX export yet, or a Hugging Face model name
(from the local cache), and is what ONNX exports are checked against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from services.retriever.rerank import Pair
from services.retriever.rerank_folder import require_max_length, require_single_label


class TorchCrossEncoder:
    backend = "torch"

    def __init__(self, model: CrossEncoder, *, name: str) -> None:
        require_single_label(model.num_labels, name)
        self.model = model
        self._identity = torch.nn.Identity()

    def predict(self, pairs: Sequence[Pair]) -> list[float]:
        """One raw logit per pair, in input order: one forward pass over all of them."""
        if not pairs:
            return []
        logits = self.model.predict(
            list(pairs),
            batch_size=len(pairs),
            activation_fn=self._identity,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(logits, dtype=np.float32).reshape(-1).tolist()


def load_torch_cross_encoder(name_or_path: str, *, max_length: int, device: str = "cpu") -> TorchCrossEncoder:
    """Loads by Hugging Face name or local directory; blocking, so call it in a thread.

    Pairs longer than `max_length` tokens are truncated.
    """
    model = CrossEncoder(name_or_path, device=device, max_length=max_length)
    config = getattr(model.model, "config", None)
    require_max_length(max_length, getattr(config, "max_position_embeddings", None), name_or_path)
    return TorchCrossEncoder(model, name=name_or_path)
