"""Cached answers reused for a question worded differently, and the guard that keeps opposites apart.

Opt-in (GATEWAY_SEMANTIC_CACHE_MIN_SIMILARITY): a question that misses the exact
answer cache may take the answer of an earlier question whose query embedding
is at least that cosine-similar, asked with everything else the same: namespace,
index version, retrieval and generation settings, history (the answer cache's
settings key). Embeddings place "X increases Y" and "X does not increase Y"
close together, so similarity alone would hand a question its opposite's
answer: two questions are never matched when their meaning markers differ
(`meaning_markers`: negations, words of direction, numbers).

The index holds, per settings key, the latest questions with their unit
vectors and the key of their answer in the exact cache. It keeps no answers
itself: an entry whose answer expired or was evicted there finds nothing and is
a miss. Capacity and time to live are the exact cache's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cachetools import TTLCache

# The cosine similarity the setting is a threshold on: more than 0 (unrelated) and at most 1 (the same).
MIN_SIMILARITY_RANGE = "more than 0 and at most 1"
# Questions kept per settings key: a lookup is one product of a matrix of at most this many
# rows with the question's vector (about 30 µs at 384 dimensions), and every question of a
# namespace at one index version with the default settings shares one key.
QUESTIONS_PER_SETTINGS = 256

# Phrases folded into a plain "not" before the words are counted.
_NEGATING_PHRASES = (
    (re.compile(r"n['’]t\b"), " not"),  # doesn't, can't, isn't
    (re.compile(r"\bcannot\b"), "can not"),
    (re.compile(r"\bfail(?:s|ed|ing)? to\b"), "not"),
)
# Words that deny what the rest of the question says.
NEGATIONS = frozenset({"not", "no", "never", "without", "none", "nothing", "neither", "nor", "lack", "lacks"})


def _forms(*verbs: str) -> frozenset[str]:
    """A regular verb ending in e with its -s, -d and -ing forms: raise, raises, raised, raising."""
    return frozenset(form for verb in verbs for form in (verb, verb + "s", verb + "d", verb[:-1] + "ing"))


# Words that give a question its direction: "X raises Y" and "X lowers Y" ask opposite things.
UPWARD = _forms("increase", "raise", "elevate", "enhance", "improve") | {"higher", "more", "greater", "rise"}
DOWNWARD = _forms("decrease", "reduce", "decline") | {
    "lower",
    "lowers",
    "lowered",
    "lowering",
    "less",
    "fewer",
    "reduction",
    "worse",
}
# Numbers as digits ("14", "0.5", "1,000"), and the small ones as words.
_NUMBER = r"\d+(?:[.,]\d+)*"
_DIGITS = re.compile(_NUMBER)
NUMBER_WORDS = frozenset(
    {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"}
)
# A word is a number or a run of letters: "il-6" is "il" and 6, "egr2" is "egr" and 2.
_WORD = re.compile(rf"{_NUMBER}|[^\W\d_]+")


@dataclass(frozen=True, slots=True)
class MeaningMarkers:
    """What must be equal for two questions to share an answer, whatever their similarity."""

    negations: int
    # "up" and "down", once for each word of direction, sorted.
    directions: tuple[str, ...]
    # In the order they appear.
    numbers: tuple[str, ...]


def words(normalised_question: str) -> list[str]:
    """The question's words, negating phrases folded into "not" ("doesn't" -> "does", "not")."""
    text = normalised_question
    for phrase, replacement in _NEGATING_PHRASES:
        text = phrase.sub(replacement, text)
    return _WORD.findall(text)


def meaning_markers(normalised_question: str) -> MeaningMarkers:
    found = words(normalised_question)
    directions = ["up" for w in found if w in UPWARD] + ["down" for w in found if w in DOWNWARD]
    numbers = tuple(w.replace(",", "") for w in found if _DIGITS.fullmatch(w) or w in NUMBER_WORDS)
    return MeaningMarkers(sum(w in NEGATIONS for w in found), tuple(sorted(directions)), numbers)


def is_marker(word: str) -> bool:
    """Whether the word is one `meaning_markers` counts."""
    return (
        word in NEGATIONS
        or word in UPWARD
        or word in DOWNWARD
        or word in NUMBER_WORDS
        or bool(_DIGITS.fullmatch(word))
    )


def unit(vector: Sequence[float] | npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The vector scaled to length 1, so that a dot product is the cosine similarity."""
    array = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(array))
    return array / norm if norm > 0 else array


@dataclass(frozen=True, slots=True)
class _Question:
    text: str  # normalised
    markers: MeaningMarkers
    answer_key: bytes


@dataclass(frozen=True, slots=True)
class _Questions:
    """The questions of one settings key, oldest first, and their unit vectors as the rows of a matrix."""

    questions: tuple[_Question, ...]
    vectors: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.questions)


class SemanticIndex:
    """Questions by settings key, looked up by the cosine similarity of their embeddings."""

    def __init__(self, min_similarity: float, capacity: int, ttl_s: float) -> None:
        self.min_similarity = min_similarity
        self._per_settings = max(1, min(QUESTIONS_PER_SETTINGS, capacity))
        # Sized by questions, not keys: at most `capacity` questions in all, the least recently used
        # settings key (all of its questions) evicted first.
        self._by_settings: TTLCache[bytes, _Questions] = TTLCache(
            maxsize=max(capacity, 1), ttl=ttl_s, getsizeof=len
        )

    def add(self, settings_key: bytes, question: str, vector: Sequence[float], answer_key: bytes) -> None:
        """Remembers a normalised question's vector beside the key its answer is cached under."""
        kept = self._by_settings.get(settings_key)
        entry = _Question(question, meaning_markers(question), answer_key)
        row = unit(vector)[np.newaxis, :]
        if kept is None or kept.vectors.shape[1] != row.shape[1]:
            # The first question of these settings (or the first since the model's dimension changed).
            self._by_settings[settings_key] = _Questions((entry,), row)
            return
        # The same question asked again replaces its older entry; the oldest go past the bound.
        others = [i for i, q in enumerate(kept.questions) if q.text != question]
        stay = others[max(0, len(others) - self._per_settings + 1) :]
        self._by_settings[settings_key] = _Questions(
            (*(kept.questions[i] for i in stay), entry), np.vstack([kept.vectors[stay], row])
        )

    def matches(
        self, settings_key: bytes, question: str, vector: Sequence[float]
    ) -> Iterator[tuple[float, bytes]]:
        """(similarity, answer key) of the questions at least min_similarity close to this normalised
        one and with the same meaning markers, the most similar first."""
        kept = self._by_settings.get(settings_key)
        if kept is None:
            return
        query = unit(vector)
        if kept.vectors.shape[1] != query.shape[0]:
            return
        similarities = kept.vectors @ query
        markers = meaning_markers(question)
        for index in np.argsort(-similarities, kind="stable"):
            similarity = float(similarities[index])
            if similarity < self.min_similarity:
                return
            candidate = kept.questions[index]
            if candidate.markers == markers:
                yield similarity, candidate.answer_key
