"""The opposite pairs SciFact's claims hold: the same words but for the guard's (not, more/less, numbers)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.semantic_cache import is_marker, words
from semantic_cache_bench.claims import Claim
from semantic_cache_bench.fresh import FreshAnswer
from semantic_cache_bench.replay import Replay


@dataclass(frozen=True)
class OppositePair:
    first: int
    second: int
    # What sets them apart: "negation", "direction", "number", or several joined by "+".
    kind: str
    # The words that differ, the first claim's before the second's: "decreases / raises".
    apart: str
    similarity: float
    same_answer: bool


def opposite_pairs(
    claims: Sequence[Claim], similarities: npt.NDArray[np.float32], answers: Sequence[FreshAnswer]
) -> list[OppositePair]:
    """Pairs of claims whose words are the same once the guard's words are left out of both, and
    whose guard's words differ."""
    by_rest: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, claim in enumerate(claims):
        by_rest[tuple(w for w in words(claim.normalised) if not is_marker(w))].append(index)
    pairs = []
    for indices in by_rest.values():
        for position, i in enumerate(indices):
            for j in indices[position + 1 :]:
                if claims[i].markers != claims[j].markers:
                    pairs.append(_pair(claims, similarities, answers, i, j))
    return sorted(pairs, key=lambda p: -p.similarity)


def _pair(
    claims: Sequence[Claim],
    similarities: npt.NDArray[np.float32],
    answers: Sequence[FreshAnswer],
    i: int,
    j: int,
) -> OppositePair:
    a, b = claims[i].markers, claims[j].markers
    kinds = [
        name
        for name, differs in (
            ("negation", a.negations != b.negations),
            ("direction", a.directions != b.directions),
            ("number", a.numbers != b.numbers),
        )
        if differs
    ]
    first, second = Counter(words(claims[i].normalised)), Counter(words(claims[j].normalised))
    only_first, only_second = " ".join((first - second).elements()), " ".join((second - first).elements())
    # The same words in another order: the numbers swapped places ("3' ... 5'" and "5' ... 3'").
    apart = (
        f"{only_first or '-'} / {only_second or '-'}"
        if only_first or only_second
        else f"{' '.join(a.numbers)} / {' '.join(b.numbers)} (order)"
    )
    return OppositePair(i, j, "+".join(kinds), apart, float(similarities[i, j]), answers[i] == answers[j])


def served_in(replayed: Replay, pairs: Sequence[OppositePair]) -> int:
    """How many of the replay's hits gave one claim of an opposite pair the other's answer."""
    opposite = {(p.first, p.second) for p in pairs}
    return sum((hit.cached, hit.asked) in opposite for hit in replayed.hits)
