"""Answer metrics: pure functions of one item's answer and sources, and the outcome table over items.

A metric that does not apply to an item returns None (citation precision of an answer that cites
nothing, context metrics of an item without expected documents), and averages skip it, so that an
item cannot score 0 or 1 on something it was never measured on.

- outcome: right when an answerable question is answered and an unanswerable one refused
  ("cannot answer", ANSWER_OUTCOME_NO_ANSWER); the 2x2 table counts each case.
- context precision@k: the share of the first k sources (chunks) whose document is expected;
  average precision is its rank-aware form (precision at each expected source's rank, averaged).
- context recall: the share of the expected documents that at least one source comes from.
- citation precision: the share of cited sources whose document is expected.
- citation coverage: the share of the answer's sentences that carry at least one [n] marker.
- faithfulness: the share of the answer's sentences a judge found supported by the sources they
  cite; a sentence without a citation is unsupported, and one the judge could not rule on
  ("unjudged") is not a pass either.
- token F1: SQuAD's, over normalised words (lower case, no punctuation, no a/an/the).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from rag_cli.answers.claims import Verdict
from services.generator.backends.extractive import split_sentences
from services.generator.citations import resolve_citations
from services.generator.sources import Source


@dataclass(frozen=True)
class AnswerSentence:
    # Without its citation markers.
    text: str
    # The numbers of the sources its markers name, in order; markers naming no source are left out.
    cited: tuple[int, ...]


# One or more [n..] markers opening a sentence (not a "[ ]" checkbox); which numbers they hold is
# resolve_citations' call.
_LEADING_MARKERS = re.compile(r"(?:\[\s*\d[\d\s,;\-–—]*\]\s*)+")
_WORD = re.compile(r"\w")


def answer_sentences(answer: str, sources: Sequence[Source]) -> list[AnswerSentence]:
    """The answer's sentences, each with the sources its [n] markers name.

    Split as the extractive generator splits source text (split_sentences: Markdown blocks and list
    items apart, abbreviations such as "e.g." not ending a sentence), so an extractive answer falls
    back into the sentences it quoted. Markers are read by the generator's own resolve_citations, so
    every form it accepts counts here too: [1], [1][3], [1] [3], [1, 2], [1; 2], [1-3].

    A marker opening a sentence belongs to the one before ("Backups run nightly. [1] They are ..."):
    models put the marker after the full stop as often as before it.
    """
    sentences: list[tuple[str, list[int]]] = []
    for segment in split_sentences(answer):
        leading = _LEADING_MARKERS.match(segment)
        if leading and sentences:
            sentences[-1][1].extend(_cited_numbers(leading.group(), sources))
            segment = segment[leading.end() :]
        text = strip_markers(segment)
        if _WORD.search(text):
            sentences.append((text, _cited_numbers(segment, sources)))
    return [AnswerSentence(text, tuple(dict.fromkeys(numbers))) for text, numbers in sentences]


def strip_markers(text: str) -> str:
    """text without its [n] markers, spaced as the generator leaves text it removes markers from."""
    return resolve_citations(text, ())[0]


def _cited_numbers(text: str, sources: Sequence[Source]) -> list[int]:
    return [citation.source_number for citation in resolve_citations(text, sources)[1]]


def outcome_correct(answerable: bool, answered: bool) -> bool:
    return answerable == answered


@dataclass(frozen=True)
class OutcomeTable:
    """Expected (answerable or not) against what happened (answered or refused)."""

    answerable_answered: int = 0
    answerable_refused: int = 0
    unanswerable_answered: int = 0
    unanswerable_refused: int = 0

    @property
    def accuracy(self) -> float | None:
        right = self.answerable_answered + self.unanswerable_refused
        return _share(right, right + self.answerable_refused + self.unanswerable_answered)

    @property
    def answered_rate(self) -> float | None:
        """Of the answerable questions, the share answered."""
        return _share(self.answerable_answered, self.answerable_answered + self.answerable_refused)

    @property
    def refusal_rate(self) -> float | None:
        """Of the unanswerable questions, the share refused."""
        return _share(self.unanswerable_refused, self.unanswerable_refused + self.unanswerable_answered)


def outcome_table(outcomes: Iterable[tuple[bool, bool]]) -> OutcomeTable:
    """The table of (answerable, answered) pairs."""
    counts = Counter(outcomes)
    return OutcomeTable(
        answerable_answered=counts[True, True],
        answerable_refused=counts[True, False],
        unanswerable_answered=counts[False, True],
        unanswerable_refused=counts[False, False],
    )


def context_precision_at_k(source_documents: Sequence[str], expected: Collection[str], k: int) -> float:
    """Of the first k sources (fewer when fewer came back), the share from an expected document."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    top = source_documents[:k]
    return sum(document in expected for document in top) / len(top) if top else 0.0


def average_precision(source_documents: Sequence[str], expected: Collection[str]) -> float:
    """Precision at the rank of each source from an expected document, averaged over those sources:
    1.0 when they all come first, lower the further down they are; 0 when there is none."""
    hits = 0
    precisions: list[float] = []
    for rank, document in enumerate(source_documents, start=1):
        if document in expected:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions) if precisions else 0.0


def context_recall(source_documents: Iterable[str], expected: Collection[str]) -> float:
    """The share of the expected documents at least one source comes from."""
    if not expected:
        raise ValueError("context recall needs at least one expected document")
    return len(set(expected).intersection(source_documents)) / len(set(expected))


def citation_precision(cited_documents: Sequence[str], expected: Collection[str]) -> float | None:
    """The share of the cited sources whose document is expected; None when nothing is cited."""
    return _share(sum(document in expected for document in cited_documents), len(cited_documents))


def citation_coverage(sentences: Sequence[AnswerSentence]) -> float | None:
    """The share of the sentences with at least one citation; None for an answer without sentences."""
    return _share(sum(bool(sentence.cited) for sentence in sentences), len(sentences))


def faithfulness(verdicts: Sequence[Verdict]) -> float | None:
    """The share of sentences judged supported; None for an answer without sentences."""
    return _share(verdicts.count(Verdict.SUPPORTED), len(verdicts))


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and the articles a/an/the removed, spaces single."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 of the normalised words; 1.0 when both normalise to nothing."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that apply (not None); None when none does."""
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None
