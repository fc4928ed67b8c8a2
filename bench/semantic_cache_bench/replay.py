"""The semantic cache replayed over the claims, asked one after another in one namespace.

Each claim, in order, is first looked up by its exact key (the same claim asked
before, word for word); then among the claims cached before it, the most
similar one at or above the threshold (with the guard: of the same meaning
markers) gives its answer: a hit. Otherwise the claim is answered afresh and
cached. As in the gateway, a hit caches nothing and one settings key keeps its
latest QUESTIONS_PER_SETTINGS questions; `by_the_gateway_cache` replays the
guarded runs through gateway/answer_cache.py itself, to show the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.answer_cache import AnswerCache, cache_key, settings_key
from gateway.config import GatewaySettings
from gateway.semantic_cache import QUESTIONS_PER_SETTINGS
from rag.gateway.v1 import gateway_pb2
from semantic_cache_bench.claims import Claim
from semantic_cache_bench.fresh import FreshAnswer

THRESHOLDS = (0.80, 0.85, 0.90, 0.93, 0.95, 0.97, 0.99)
# The gateway's answer cache at its defaults.
CAPACITY: int = GatewaySettings.model_fields["answer_cache_size"].default
TTL_S: float = GatewaySettings.model_fields["answer_cache_ttl_s"].default
WINDOW = min(QUESTIONS_PER_SETTINGS, CAPACITY)


@dataclass(frozen=True)
class Hit:
    cached: int  # the claim whose answer is served
    asked: int
    similarity: float


@dataclass(frozen=True)
class Replay:
    threshold: float
    guard: bool
    hits: list[Hit]
    exact: int  # claims answered by their exact key


def replay(
    claims: Sequence[Claim], similarities: npt.NDArray[np.float32], threshold: float, *, guard: bool
) -> Replay:
    cached: list[int] = []
    exact_keys: set[str] = set()
    hits: list[Hit] = []
    exact = 0
    for asked, claim in enumerate(claims):
        if claim.normalised in exact_keys:
            exact += 1
            continue
        hit = _most_similar(claims, similarities, cached[-WINDOW:], asked, threshold, guard=guard)
        if hit is not None:
            hits.append(hit)
        else:
            cached.append(asked)
            exact_keys.add(claim.normalised)
    return Replay(threshold, guard, hits, exact)


def _most_similar(
    claims: Sequence[Claim],
    similarities: npt.NDArray[np.float32],
    cached: list[int],
    asked: int,
    threshold: float,
    *,
    guard: bool,
) -> Hit | None:
    row = similarities[asked, cached]
    for position in np.argsort(-row, kind="stable"):
        if row[position] < threshold:
            return None
        candidate = cached[position]
        if not guard or claims[candidate].markers == claims[asked].markers:
            return Hit(candidate, asked, float(row[position]))
    return None


def by_the_gateway_cache(
    claims: Sequence[Claim], vectors: npt.NDArray[np.float32], threshold: float
) -> Replay:
    """The guarded replay made by the gateway's own AnswerCache at its default size and time to live."""
    cache = AnswerCache(CAPACITY, TTL_S, semantic_min_similarity=threshold)
    hits: list[Hit] = []
    exact = 0
    for asked, claim in enumerate(claims):
        request = gateway_pb2.AskRequest(namespace="scifact", question=claim.text)
        key, settings = cache_key(request, 1), settings_key(request, 1)
        if cache.get(key) is not None:
            exact += 1
            continue
        similar = cache.get_similar(settings, claim.text, vectors[asked].tolist())
        if similar is not None:
            hits.append(Hit(int(similar.response.answer), asked, similar.similarity))
            continue
        cache.put(key, gateway_pb2.AskResponse(answer=str(asked)))
        cache.put_similar(settings, claim.text, vectors[asked].tolist(), key)
    return Replay(threshold, True, hits, exact)


def same_hits(first: Replay, second: Replay) -> bool:
    """Whether two replays served the same claims' answers to the same claims (similarities aside:
    the gateway's product of a matrix and a vector may differ from the replay's in the last bits)."""
    return first.exact == second.exact and [(h.cached, h.asked) for h in first.hits] == [
        (h.cached, h.asked) for h in second.hits
    ]


@dataclass(frozen=True)
class Tally:
    """A replay's hits judged against the claims' fresh answers."""

    replay: Replay
    claims: int
    # The served answer differs from the asking claim's own in outcome or cited documents.
    wrong_answer: int
    # The two claims differ in the guard's words (negation, direction, numbers).
    wrong_meaning: int
    # Either of the two.
    wrong: int

    @property
    def hits(self) -> int:
        return len(self.replay.hits)


def tally(replayed: Replay, claims: Sequence[Claim], answers: Sequence[FreshAnswer]) -> Tally:
    wrong_answer = wrong_meaning = wrong = 0
    for hit in replayed.hits:
        answer_differs = answers[hit.cached] != answers[hit.asked]
        meaning_differs = claims[hit.cached].markers != claims[hit.asked].markers
        wrong_answer += answer_differs
        wrong_meaning += meaning_differs
        wrong += answer_differs or meaning_differs
    return Tally(replayed, len(claims), wrong_answer, wrong_meaning, wrong)


@dataclass(frozen=True)
class Pairs:
    """Every (earlier, later) pair of distinct claims at or above a threshold, whatever was cached."""

    threshold: float
    close: int
    markers_differ: int
    answers_differ: int


def pairs_at(
    claims: Sequence[Claim],
    similarities: npt.NDArray[np.float32],
    answers: Sequence[FreshAnswer],
    threshold: float,
) -> Pairs:
    earlier, later = np.nonzero(np.triu(similarities >= threshold, k=1))
    indices = [(int(i), int(j)) for i, j in zip(earlier, later, strict=True)]
    close = [(i, j) for i, j in indices if claims[i].normalised != claims[j].normalised]
    return Pairs(
        threshold,
        len(close),
        sum(claims[i].markers != claims[j].markers for i, j in close),
        sum(answers[i] != answers[j] for i, j in close),
    )
