"""The offline answer backend: quotes the sources' most relevant sentences, citing each.

It needs no model service, so the platform answers questions end to end on a laptop
or in CI. Relevance is lexical:

- question and sentences are reduced to content terms: lower-cased words, English
  stopwords dropped, light suffix stemming (see stem());
- a sentence's overlap is the idf-weighted share of the question's terms it contains,
  with idf computed over the sentences of the given sources, so a question term that
  no source mentions (such as "Peru") weighs most and pulls every overlap down;
- the question is answered only if a sentence's overlap reaches min_overlap and that
  sentence holds at least two of its terms (one, for a one-term question); and not when
  more than max_unmentioned of the question's weight is in terms no source mentions at
  all: the sources are about something else ("vacation days" against an expense
  policy that counts days). Then the reply is NO_ANSWER_SENTENCE;
- the source's retrieval rank adds a bonus that orders sentences of similar overlap
  but never lifts one over min_overlap;
- the answer quotes one document (max_documents): the one holding the best sentence
  by that order, up to max_sentences of its sentences, from any of its chunks.

The defaults were chosen on SciFact's train claims (bench/extractive_calibration.py,
the curve in bench/README.md): 73.5 % of the claims are answered, 64.5 % of the cited
sources are relevant abstracts, and every claim asked where the corpus is not is
refused, as is every unanswerable question of golden/samples.jsonl. Quoting several
documents cited an irrelevant one in a third of the answers: retrieval's order is the
better judge of which source is relevant, lexical overlap of whether it answers.

The prior turns and the generation options are ignored: quoting cannot resolve "it"
from an earlier turn, and there is no sampling to tune. Usage is always 0 tokens: no
model ran, and a word count passed off as tokens would skew token metrics.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass

from services.generator.backends.base import no_answer
from services.generator.citations import resolve_citations
from services.generator.sources import Answer, Citation, GenerationOptions, Source, Turn, Usage

# A question that shares only common words with the sources ("restore my iPhone from
# iCloud backup" against a database runbook) scores about 0.2 and gets no answer; a
# sentence holding a quarter of the question's weight, in two terms or more, answers it.
DEFAULT_MIN_OVERLAP = 0.25
# Half the question's weight in terms no source mentions: the question is about something
# the sources do not discuss. SciFact claims in their corpus: a median of 0.32; asked
# where the corpus is not: 0.9.
DEFAULT_MAX_UNMENTIONED = 0.5
MIN_MATCHED_TERMS = 2
# Further sentences must come close to the best one, so an answer does not trail off
# into sentences that merely share a word with the question.
RELATIVE_FLOOR = 0.6
# Added to the overlap when ranking sentences: RANK_BONUS / (rank + 1), rank 0 = best
# source. At 0.2 the first source wins over the third unless the third's sentence
# overlaps the question by 0.13 more (SciFact: citation precision 0.59 -> 0.64).
RANK_BONUS = 0.2
DEFAULT_MAX_DOCUMENTS = 1

# Question words and function words that say nothing about the topic.
_STOPWORD_LIST = """
    a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing done during each either else ever every
    few for from further get gets got had has have having he her here hers him his how however i if
    in into is it its itself just let like many may me might more most much must my neither no nor
    not now of off often on once only or other our ours out over own per please same shall she
    should so some such than that the their theirs them then there these they this those through
    thus to too under until up upon us very via was we were what whatever when where whether which
    while who whom whose why will with within without would yes yet you your yours
"""
STOPWORDS = frozenset(_STOPWORD_LIST.split())

_WORD = re.compile(r"\w+")
# "How long", "how soon"...: what kind of answer is asked for, not what it is about; a
# source says "for 30 days", not "long".
_HOW_PHRASE = re.compile(r"\bhow\s+(?:long|soon|quickly|far|big|large|old)\b", re.IGNORECASE)
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^\s{0,3}#{1,6}(?:\s|$)")
_RULE = re.compile(r"^\s{0,3}([-*_=])(?:\s*\1){2,}\s*$")
_TABLE_RULE = re.compile(r"^\s*\|?(?:\s*:?-+:?\s*\|)+\s*:?-*:?\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d{1,3}[.)])\s+")
_BLOCKQUOTE = re.compile(r"^\s*(?:>\s?)+")
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+\S)")
_FINAL_PUNCTUATION = re.compile(r"[.!?]+[\"'”’)\]]*$|[:;,]$")
# Words ending in "." that do not end a sentence.
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "vs.", "approx.", "cf.", "dr.", "mr.", "ms.", "no."})


class ExtractiveBackend:
    def __init__(
        self,
        min_overlap: float = DEFAULT_MIN_OVERLAP,
        max_sentences: int = 3,
        max_documents: int = DEFAULT_MAX_DOCUMENTS,
        max_unmentioned: float = DEFAULT_MAX_UNMENTIONED,
    ) -> None:
        if not 0.0 < min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be at least 1, got {max_sentences}")
        if max_documents < 1:
            raise ValueError(f"max_documents must be at least 1, got {max_documents}")
        if not 0.0 <= max_unmentioned <= 1.0:
            raise ValueError(f"max_unmentioned must be in [0, 1], got {max_unmentioned}")
        self._limits = _Limits(min_overlap, max_unmentioned, max_sentences, max_documents)

    @property
    def name(self) -> str:
        return "extractive"

    async def answer(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Turn],
        options: GenerationOptions,
    ) -> Answer:
        # Pure string work over at most a few dozen chunks (well under a millisecond per
        # chunk), so it runs on the event loop rather than paying for a thread hop.
        parts = self._answer_parts(question, sources)
        return self._final(parts)

    async def stream(
        self,
        question: str,
        sources: Sequence[Source],
        history: Sequence[Turn],
        options: GenerationOptions,
    ) -> AsyncIterator[str | Answer]:
        parts = self._answer_parts(question, sources)
        answer = self._final(parts)
        # Sentence by sentence, so the deltas join to exactly answer.text.
        for index, (sentence, _) in enumerate(parts):
            yield sentence if index == 0 else " " + sentence
        if not parts:
            yield answer.text
        yield answer

    def _answer_parts(self, question: str, sources: Sequence[Source]) -> list[tuple[str, _SourceSentence]]:
        """The answer's sentences, each with its [n] marker, and the source sentence quoted."""
        chosen = _select_sentences(question, sources, self._limits)
        return [(_cited(sentence.text, sentence.source.number), sentence) for sentence in chosen]

    def _final(self, parts: list[tuple[str, _SourceSentence]]) -> Answer:
        if not parts:
            return no_answer(self.name)
        return Answer(
            text=" ".join(text for text, _ in parts),
            answered=True,
            citations=_citations(sentence for _, sentence in parts),
            invalid_citation_numbers=[],
            usage=Usage(prompt_tokens=0, completion_tokens=0),
            backend=self.name,
        )


@dataclass(frozen=True)
class _SourceSentence:
    source: Source
    rank: int  # index of the source in the request, best first
    position: int  # index of the sentence within its source
    text: str
    terms: frozenset[str]


@dataclass(frozen=True)
class _Limits:
    min_overlap: float
    max_unmentioned: float
    max_sentences: int
    max_documents: int


def _select_sentences(question: str, sources: Sequence[Source], limits: _Limits) -> list[_SourceSentence]:
    """The sentences that answer the question, in reading order; empty when none does."""
    question_terms = frozenset(content_terms(_HOW_PHRASE.sub(" ", question)))
    sentences = list(_sentences_of(sources))
    if not question_terms or not sentences:
        return []
    weights = _idf(question_terms, sentences)
    total = sum(weights.values())
    mentioned = frozenset().union(*(s.terms for s in sentences))
    if sum(weights[t] for t in question_terms - mentioned) / total > limits.max_unmentioned:
        return []
    overlaps = [(sum(weights[t] for t in question_terms & s.terms) / total, s) for s in sentences]
    # The best sentence must hold two of the question's terms; the ones quoted beside it need not.
    needed = min(MIN_MATCHED_TERMS, len(question_terms))
    best = max(
        (overlap for overlap, s in overlaps if len(question_terms & s.terms) >= needed),
        default=0.0,
    )
    if best < limits.min_overlap:
        return []
    floor = max(limits.min_overlap, best * RELATIVE_FLOOR)
    ranked = sorted(
        ((overlap, s) for overlap, s in overlaps if overlap >= floor),
        key=lambda item: (-(item[0] + RANK_BONUS / (item[1].rank + 1)), item[1].rank, item[1].position),
    )
    # Documents, not chunks: overlapping chunks of one document share its sentences.
    quoted = list(dict.fromkeys(s.source.document_id for _, s in ranked))[: limits.max_documents]
    chosen = _distinct(s for _, s in ranked if s.source.document_id in quoted)[: limits.max_sentences]
    return _reading_order(chosen)


def _sentences_of(sources: Sequence[Source]) -> Iterator[_SourceSentence]:
    for rank, source in enumerate(sources):
        for position, text in enumerate(split_sentences(source.text)):
            terms = frozenset(content_terms(text))
            # A sentence ending in ":" introduces what follows (often skipped code).
            if terms and not text.endswith(":"):
                yield _SourceSentence(source, rank, position, text, terms)


def _idf(terms: frozenset[str], sentences: Sequence[_SourceSentence]) -> dict[str, float]:
    """Smoothed idf, 1 + ln((N + 1) / (df + 1)): a term no sentence has weighs most.

    The floor of 1 matters: a source of one or two sentences has every term in every
    sentence, and an idf near 0 (as BM25's) would make matching them worth nothing.
    """
    count = len(sentences)
    weights: dict[str, float] = {}
    for term in terms:
        frequency = sum(term in s.terms for s in sentences)
        weights[term] = 1 + math.log((count + 1) / (frequency + 1))
    return weights


def _distinct(sentences: Iterable[_SourceSentence]) -> list[_SourceSentence]:
    """Drops repeats: overlapping chunks of one document hold the same sentences."""
    seen: set[str] = set()
    distinct: list[_SourceSentence] = []
    for sentence in sentences:
        key = " ".join(sentence.text.lower().split())
        if key not in seen:
            seen.add(key)
            distinct.append(sentence)
    return distinct


def _reading_order(chosen: list[_SourceSentence]) -> list[_SourceSentence]:
    """Sources in the order of their best sentence; each source's sentences as it has them."""
    source_order: dict[int, int] = {}
    for sentence in chosen:
        source_order.setdefault(sentence.rank, len(source_order))
    return sorted(chosen, key=lambda s: (source_order[s.rank], s.position))


def _cited(sentence: str, number: int) -> str:
    """The sentence with its marker before the final punctuation: "... nightly [1]."."""
    # Bracketed numbers in the document itself (footnotes, "[2]") would read as citations.
    text = resolve_citations(sentence, ())[0]
    end = _FINAL_PUNCTUATION.search(text)
    if end is None:
        return f"{text} [{number}]."
    punctuation = end.group()
    if punctuation in {":", ";", ","}:
        punctuation = "."
    return f"{text[: end.start()].rstrip()} [{number}]{punctuation}"


def _citations(sentences: Iterable[_SourceSentence]) -> list[Citation]:
    """One citation per quoted source, in order of first appearance, quoting its sentences."""
    quotes: dict[int, list[str]] = {}
    by_number: dict[int, Source] = {}
    for sentence in sentences:
        quotes.setdefault(sentence.source.number, []).append(sentence.text)
        by_number[sentence.source.number] = sentence.source
    return [
        Citation(number, by_number[number].document_id, by_number[number].chunk_index, " ".join(texts))
        for number, texts in quotes.items()
    ]


def content_terms(text: str) -> list[str]:
    """Lower-cased, stemmed words of text, without stopwords and single letters."""
    words = _WORD.findall(text.lower())
    return [stem(w) for w in words if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def stem(word: str) -> str:
    """A deliberately small stemmer: plural -s/-es/-ies, -ing, -ed and a final -e.

    Enough for "backups"/"backup", "restoring"/"restored"/"restore" and
    "running"/"runs"/"run" to meet; not a linguist's stemmer.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    word = _strip_plural(word)
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = _undouble(word[: -len(suffix)])
            break
    # Drops the "e" that -ing and -ed took away: "restore" meets "restor(ing)".
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]
    return word


def _strip_plural(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("es") and word[:-2].endswith(("ch", "sh", "x", "z")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _undouble(word: str) -> str:
    """ "runn" -> "run", "stopp" -> "stop", but "fill" and "pass" stay."""
    if len(word) > 2 and word[-1] == word[-2] and word[-1] not in "aeioulsz":
        return word[:-1]
    return word


def split_sentences(text: str) -> list[str]:
    """Prose sentences of Markdown text.

    Fenced code, headings, rules and table rules are not prose and yield nothing; each
    list item and paragraph is split on its own, so a bullet never runs into the next.
    A fence left open (a chunk cut inside a code block) hides the rest of the text.
    """
    return [sentence for block in _prose_blocks(text) for sentence in _split_block(block)]


def _prose_blocks(text: str) -> Iterator[str]:
    """Paragraphs, list items and table rows, each joined onto one line."""
    current: list[str] = []
    fence: str | None = None
    for raw_line in text.splitlines():
        if fence is not None:
            if raw_line.strip().startswith(fence):
                fence = None
            continue
        line = _BLOCKQUOTE.sub("", raw_line).rstrip()
        if _RULE.match(line):
            # Also ends a setext heading ("Title" over "=====" or "---"): drop the title.
            current.clear()
            continue
        opening = _FENCE.match(line)
        if opening or not line or _HEADING.match(line) or _TABLE_RULE.match(line):
            yield from _flush(current)
            fence = opening.group(1) if opening else None
        elif item := _LIST_ITEM.match(line):
            yield from _flush(current)
            current.append(line[item.end() :])
        elif line.lstrip().startswith("|"):
            yield from _flush(current)
            yield line.strip().strip("|").strip()
        else:
            current.append(line.strip())
    yield from _flush(current)


def _flush(lines: list[str]) -> Iterator[str]:
    if lines:
        yield " ".join(line.strip() for line in lines)
        lines.clear()


def _split_block(block: str) -> Iterator[str]:
    start = 0
    for end in _SENTENCE_END.finditer(block):
        last_word = block[start : end.end()].rsplit(None, 1)[-1].lower()
        if last_word in _ABBREVIATIONS or re.fullmatch(r"\w\.", last_word):
            continue  # "e.g. a dump" or "J. Smith": not a sentence end
        yield block[start : end.end()].strip()
        start = end.end()
    if block[start:].strip():
        yield block[start:].strip()
