"""Answers kept for repeated questions, never served once the documents behind them changed.

The key holds the namespace's index version, which the retriever bumps in the
same transaction as every upsert or delete that changes the namespace. After
an ingest, the next question reads the new version and so looks up a new key:
a stale answer cannot be found, whichever gateway replica cached it, and it
ages out of the LRU/TTL bounds.

With GATEWAY_SEMANTIC_CACHE_MIN_SIMILARITY set, a miss may still find the
answer of a similar question asked with the same settings key (everything in
the key but the question; gateway/semantic_cache.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cachetools import TTLCache

from gateway.semantic_cache import SemanticIndex
from rag.gateway.v1 import gateway_pb2


def normalise_question(question: str) -> str:
    """Case and spacing do not change what is asked."""
    return re.sub(r"\s+", " ", question).strip().casefold()


def settings_key(request: gateway_pb2.AskRequest, index_version: int) -> bytes:
    """Everything that shapes the answer but the question: namespace, retrieval and generation
    settings, history, index version. Questions with the same settings key may share an answer
    when the semantic cache finds them alike."""
    return _digest(
        request.namespace.encode(),
        _settings_of(request.retrieval).SerializeToString(deterministic=True),
        request.generation.SerializeToString(deterministic=True),
        b"".join(turn.SerializeToString(deterministic=True) for turn in request.history),
        str(index_version).encode(),
    )


def cache_key(request: gateway_pb2.AskRequest, index_version: int) -> bytes:
    """Everything that shapes the answer: the settings key and the normalised question."""
    return _digest(settings_key(request, index_version), normalise_question(request.question).encode())


def _digest(*parts: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        # Length-prefixed, so no two different tuples hash the same bytes.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class SimilarAnswer:
    """A cached answer to another question, and the cosine similarity of the two questions."""

    response: gateway_pb2.AskResponse
    similarity: float


class AnswerCache:
    """An LRU of serialised answers with a time to live; capacity 0 turns it off.

    semantic_min_similarity: unset, answers are found by their exact key only; set, also
    by a similar question's embedding (gateway/semantic_cache.py), within the same capacity
    and time to live.
    """

    def __init__(self, capacity: int, ttl_s: float, semantic_min_similarity: float | None = None) -> None:
        self.enabled = capacity > 0
        self._answers: TTLCache[bytes, bytes] = TTLCache(maxsize=max(capacity, 1), ttl=ttl_s)
        self._similar = (
            SemanticIndex(semantic_min_similarity, capacity, ttl_s)
            if self.enabled and semantic_min_similarity is not None
            else None
        )

    @property
    def semantic(self) -> bool:
        """Whether a miss is also looked up by the question's embedding."""
        return self._similar is not None

    def get(self, key: bytes) -> gateway_pb2.AskResponse | None:
        if not self.enabled:
            return None
        stored = self._answers.get(key)
        return None if stored is None else gateway_pb2.AskResponse.FromString(stored)

    def get_similar(self, settings: bytes, question: str, embedding: Sequence[float]) -> SimilarAnswer | None:
        """The answer of the most similar question asked with these settings whose answer is still
        cached, if one is close enough and means the same by the guard's markers."""
        if self._similar is None:
            return None
        for similarity, key in self._similar.matches(settings, normalise_question(question), embedding):
            found = self.get(key)
            if found is not None:
                return SimilarAnswer(found, similarity)
        return None

    def put(self, key: bytes, response: gateway_pb2.AskResponse) -> None:
        if self.enabled:
            # Stored without the per-request timings; a hit reports its own.
            kept = gateway_pb2.AskResponse()
            kept.CopyFrom(response)
            del kept.timings[:]
            self._answers[key] = kept.SerializeToString()

    def put_similar(self, settings: bytes, question: str, embedding: Sequence[float], key: bytes) -> None:
        """Makes the answer cached under `key` findable by its question's embedding."""
        if self._similar is not None and embedding:
            self._similar.add(settings, normalise_question(question), embedding, key)


def _settings_of(retrieval: gateway_pb2.RetrievalOptions) -> gateway_pb2.RetrievalOptions:
    """The retrieval options without the read-your-writes token: the key holds the version itself."""
    settings = gateway_pb2.RetrievalOptions()
    settings.CopyFrom(retrieval)
    settings.ClearField("min_index_version")
    return settings
