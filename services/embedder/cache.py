"""An LRU cache of embeddings, so a repeated query skips the model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cachetools import LRUCache

from services.embedder import instruments


@dataclass(frozen=True, slots=True)
class CachedEmbedding:
    vector: npt.NDArray[np.float32]
    truncated: bool


class EmbeddingCache:
    """Keyed by (model, input kind, text hash): the same text embeds differently as a query in some models."""

    def __init__(self, model: str, capacity: int) -> None:
        self._model = model
        self.capacity = capacity
        self._entries: LRUCache[bytes, CachedEmbedding] = LRUCache(maxsize=max(capacity, 1))
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries) if self.capacity else 0

    def key(self, kind: str, text: str) -> bytes:
        # A digest, not the text: keys stay small and the cache holds no document text.
        return hashlib.blake2b(f"{self._model}\0{kind}\0{text}".encode(), digest_size=16).digest()

    def get(self, key: bytes) -> CachedEmbedding | None:
        if not self.capacity:
            return None
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            instruments.cache_misses.add(1)
        else:
            self.hits += 1
            instruments.cache_hits.add(1)
        return found

    def put(self, key: bytes, embedding: CachedEmbedding) -> None:
        if self.capacity:
            self._entries[key] = embedding
