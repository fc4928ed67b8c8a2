"""What the batcher needs from an inference engine, whichever it is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from services.embedder.tokens import TokenizedText


class Encoder(Protocol):
    # "onnx" or "torch", reported by Info.
    backend: str

    def encode(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        """L2-normalised embeddings, one row per text, in order. Blocking: call it off the event loop."""
        ...
