"""Answers kept for repeated questions, never served once the documents behind them changed.

The key holds the namespace's index version, which the retriever bumps in the
same transaction as every upsert or delete that changes the namespace. After
an ingest, the next question reads the new version and so looks up a new key:
a stale answer cannot be found, whichever gateway replica cached it, and it
ages out of the LRU/TTL bounds.
"""

from __future__ import annotations

import hashlib
import re

from cachetools import TTLCache

from rag.gateway.v1 import gateway_pb2


def normalise_question(question: str) -> str:
    """Case and spacing do not change what is asked."""
    return re.sub(r"\s+", " ", question).strip().casefold()


def cache_key(request: gateway_pb2.AskRequest, index_version: int) -> bytes:
    """Everything that shapes the answer: namespace, question, retrieval and generation settings, history."""
    digest = hashlib.sha256()
    for part in (
        request.namespace.encode(),
        normalise_question(request.question).encode(),
        _settings_of(request.retrieval).SerializeToString(deterministic=True),
        request.generation.SerializeToString(deterministic=True),
        b"".join(turn.SerializeToString(deterministic=True) for turn in request.history),
        str(index_version).encode(),
    ):
        # Length-prefixed, so no two different tuples hash the same bytes.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class AnswerCache:
    """An LRU of serialised answers with a time to live; capacity 0 turns it off."""

    def __init__(self, capacity: int, ttl_s: float) -> None:
        self.enabled = capacity > 0
        self._answers: TTLCache[bytes, bytes] = TTLCache(maxsize=max(capacity, 1), ttl=ttl_s)

    def get(self, key: bytes) -> gateway_pb2.AskResponse | None:
        if not self.enabled:
            return None
        stored = self._answers.get(key)
        return None if stored is None else gateway_pb2.AskResponse.FromString(stored)

    def put(self, key: bytes, response: gateway_pb2.AskResponse) -> None:
        if self.enabled:
            # Stored without the per-request timings; a hit reports its own.
            kept = gateway_pb2.AskResponse()
            kept.CopyFrom(response)
            del kept.timings[:]
            self._answers[key] = kept.SerializeToString()


def _settings_of(retrieval: gateway_pb2.RetrievalOptions) -> gateway_pb2.RetrievalOptions:
    """The retrieval options without the read-your-writes token: the key holds the version itself."""
    settings = gateway_pb2.RetrievalOptions()
    settings.CopyFrom(retrieval)
    settings.ClearField("min_index_version")
    return settings
