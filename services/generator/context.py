"""Which sources and prior turns go into the prompt, within the model's context window.

Steps, in order:

1. Sources are ordered best first by retrieval score; equal scores keep request order.
   Every source keeps its number (its position in the request + 1), so [n] names the
   request's context[n-1] for every caller; a dropped source just leaves a gap.
2. Near-duplicates go: a source whose set of words has a Jaccard similarity of at least
   dedup_threshold with a better source already kept adds nothing but tokens. At the
   default 0.9 that is the same text under two ids, a copy with a line changed, or two
   chunks of a short document that overlap almost entirely; neighbouring chunks that
   share only their overlap stay (they score far lower).
3. With a token budget (LLM backends), the prompt must leave max_tokens for the answer:
   budget = context window - system prompt - question - max_tokens - chat-template
   overhead. The newest history turns come first, up to history_max_turns and
   history_share of the budget; the first turn that does not fit ends the history, so
   turns are dropped oldest first. Sources take the rest, best first: one that does not
   fit is dropped, and smaller ones after it may still fit. The best source alone is
   cut at its last sentence end that fits instead: it is the likeliest to hold the
   answer, and dropping it from a small window would leave the model nothing to answer
   from. A cut lower-ranked source adds little and risks being read out of context.
   Finally the whole prompt is counted once more, so prompt_tokens_estimate + max_tokens
   never exceeds the window, as the counter (tokens.py) sees it.

The extractive backend gets steps 1 and 2 only: it reads no prompt, so has no budget.
"""

from __future__ import annotations

import bisect
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from services.generator.prompt import build_messages
from services.generator.sources import Source, Turn
from services.generator.tokens import TokenCounter

DEFAULT_DEDUP_THRESHOLD = 0.9
DEFAULT_HISTORY_MAX_TURNS = 10
DEFAULT_HISTORY_SHARE = 0.25
# Chat templates wrap each message in role markers (ChatML: "<|im_start|>user\n" ...
# "<|im_end|>\n", 5 tokens; Llama 3 a few more) and prime the reply with an assistant
# header. Counted generously: an overestimate costs a little context, an underestimate
# an HTTP 400.
MESSAGE_OVERHEAD_TOKENS = 8
REPLY_PRIMING_TOKENS = 4

_WORD = re.compile(r"\w+")
# Where a source may be cut: after a sentence's final punctuation, or at a blank line.
_SENTENCE_END = re.compile(r"[.!?][\"'”’)\]]*(?=\s)|\n[ \t]*\n")


class DropReason(enum.StrEnum):
    DUPLICATE = "duplicate"
    OVER_BUDGET = "over_budget"


@dataclass(frozen=True)
class DroppedSource:
    number: int
    reason: DropReason
    # For a duplicate: the number of the kept source it repeats.
    duplicate_of: int | None = None


@dataclass(frozen=True)
class AssembledContext:
    # Kept sources, best first, with their request numbers; the text of a cut one is cut.
    sources: list[Source]
    # Kept turns, oldest first.
    history: list[Turn]
    dropped_sources: list[DroppedSource]
    dropped_turns: int
    # The number of the source cut at a sentence end to fit, if any.
    truncated_source: int | None
    # The prompt's tokens as counted (with the margin); None without a budget.
    prompt_tokens_estimate: int | None

    def describe(self) -> str:
        """One line for the log: what was kept and why the rest was not."""
        dropped = ", ".join(
            f"{d.number} ({d.reason}{f' of {d.duplicate_of}' if d.duplicate_of else ''})"
            for d in self.dropped_sources
        )
        parts = [
            f"sources kept {[s.number for s in self.sources]}",
            f"dropped [{dropped}]",
            f"history turns kept {len(self.history)}, dropped {self.dropped_turns}",
        ]
        if self.truncated_source is not None:
            parts.append(f"source {self.truncated_source} cut to fit")
        if self.prompt_tokens_estimate is not None:
            parts.append(f"prompt tokens ~{self.prompt_tokens_estimate}")
        return "; ".join(parts)


class PromptTooLong(ValueError):
    """The question and the answer reserve alone do not fit in the context window."""


@dataclass(frozen=True)
class TokenBudget:
    counter: TokenCounter
    context_window: int
    # Most of the budget left after the fixed parts that the history may take.
    history_share: float = DEFAULT_HISTORY_SHARE

    def __post_init__(self) -> None:
        if self.context_window < 1:
            raise ValueError(f"context_window must be at least 1, got {self.context_window}")
        if not 0.0 <= self.history_share <= 1.0:
            raise ValueError(f"history_share must be 0..1, got {self.history_share}")


class ContextAssembler:
    def __init__(
        self,
        *,
        budget: TokenBudget | None = None,
        dedup_threshold: float = DEFAULT_DEDUP_THRESHOLD,
        history_max_turns: int = DEFAULT_HISTORY_MAX_TURNS,
    ) -> None:
        if not 0.0 < dedup_threshold <= 1.0:
            raise ValueError(f"dedup_threshold must be in (0, 1], got {dedup_threshold}")
        if history_max_turns < 0:
            raise ValueError(f"history_max_turns must be at least 0, got {history_max_turns}")
        self._budget = budget
        self._dedup_threshold = dedup_threshold
        self._history_max_turns = history_max_turns
        self._source_frame_tokens = _source_frame_tokens(budget.counter) if budget else 0

    def assemble(
        self, question: str, sources: Sequence[Source], history: Sequence[Turn], max_tokens: int
    ) -> AssembledContext:
        """The sources and turns to send; PromptTooLong if not even the question fits."""
        ranked = sorted(sources, key=lambda source: -source.score)  # stable: ties keep request order
        distinct, duplicates = _drop_duplicates(ranked, self._dedup_threshold)
        recent = _without_leading_answer(
            history[-self._history_max_turns :] if self._history_max_turns else []
        )
        if self._budget is None:
            fitted = AssembledContext(
                sources=distinct,
                history=recent,
                dropped_sources=[],
                dropped_turns=0,
                truncated_source=None,
                prompt_tokens_estimate=None,
            )
        else:
            fitted = self._fit(question, distinct, recent, max_tokens, self._budget)
        return replace(
            fitted,
            dropped_sources=sorted(duplicates + fitted.dropped_sources, key=lambda d: d.number),
            dropped_turns=len(history) - len(fitted.history),
        )

    def _fit(
        self, question: str, sources: list[Source], history: list[Turn], max_tokens: int, budget: TokenBudget
    ) -> AssembledContext:
        """What of sources (best first) and history fits the budget; drops reported are its own."""
        available = budget.context_window - max_tokens - _prompt_tokens(question, [], [], budget.counter)
        if available < 0:
            raise PromptTooLong(
                f"the question and max_tokens ({max_tokens}) need more than the model's context "
                f"window of {budget.context_window} tokens; lower max_tokens or shorten the question"
            )
        turns = _fit_history(history, int(available * budget.history_share), budget.counter)
        left = available - sum(_turn_tokens(turns, budget.counter))
        kept, dropped, truncated = self._fit_sources(sources, left, budget.counter)
        # Counts of parts do not add up exactly to the count of the whole prompt: check
        # the whole, and give up the lowest-ranked sources while it does not fit.
        estimate = _prompt_tokens(question, kept, turns, budget.counter)
        while kept and estimate + max_tokens > budget.context_window:
            dropped.append(DroppedSource(kept.pop().number, DropReason.OVER_BUDGET))
            estimate = _prompt_tokens(question, kept, turns, budget.counter)
        return AssembledContext(
            sources=kept,
            history=turns,
            dropped_sources=dropped,
            dropped_turns=0,
            truncated_source=truncated if any(s.number == truncated for s in kept) else None,
            prompt_tokens_estimate=estimate,
        )

    def _fit_sources(
        self, sources: list[Source], limit: int, counter: TokenCounter
    ) -> tuple[list[Source], list[DroppedSource], int | None]:
        """(kept, dropped, number of the cut source) for sources best first within limit tokens."""
        texts = counter.count_many([source.text for source in sources])
        titles = counter.count_many([source.title for source in sources])
        kept: list[Source] = []
        dropped: list[DroppedSource] = []
        truncated: int | None = None
        left = limit
        for source, text_tokens, title_tokens in zip(sources, texts, titles, strict=True):
            overhead = title_tokens + self._source_frame_tokens
            if text_tokens + overhead <= left:
                kept.append(source)
                left -= text_tokens + overhead
            elif not kept and not dropped and (cut := _cut_to_fit(source.text, left - overhead, counter)):
                kept.append(replace(source, text=cut))
                left -= counter.count(cut) + overhead
                truncated = source.number
            else:
                dropped.append(DroppedSource(source.number, DropReason.OVER_BUDGET))
        return kept, dropped, truncated


def _drop_duplicates(ranked: Sequence[Source], threshold: float) -> tuple[list[Source], list[DroppedSource]]:
    kept: list[tuple[Source, frozenset[str]]] = []
    dropped: list[DroppedSource] = []
    for source in ranked:
        words = frozenset(_WORD.findall(source.text.lower()))
        original = next((k for k, k_words in kept if _jaccard(words, k_words) >= threshold), None)
        if original is None:
            kept.append((source, words))
        else:
            dropped.append(DroppedSource(source.number, DropReason.DUPLICATE, duplicate_of=original.number))
    return [source for source, _ in kept], dropped


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    # Two texts without words are not duplicates of each other, just empty.
    return len(a & b) / len(a | b) if a and b else 0.0


def _without_leading_answer(turns: Sequence[Turn]) -> list[Turn]:
    """Turns without a first assistant turn, whose question is no longer there.

    An answer to an unseen question confuses the model, and some chat templates reject a
    conversation that does not open with a user turn.
    """
    return list(turns[1:] if turns and turns[0].role == "assistant" else turns)


def _fit_history(turns: list[Turn], limit: int, counter: TokenCounter) -> list[Turn]:
    """The newest turns whose tokens add up to at most limit, oldest first."""
    kept = 0
    used = 0
    for tokens in reversed(_turn_tokens(turns, counter)):
        if used + tokens > limit:
            break
        used += tokens
        kept += 1
    return _without_leading_answer(turns[len(turns) - kept :])


def _turn_tokens(turns: Sequence[Turn], counter: TokenCounter) -> list[int]:
    return [tokens + MESSAGE_OVERHEAD_TOKENS for tokens in counter.count_many([t.content for t in turns])]


def _prompt_tokens(
    question: str, sources: Sequence[Source], history: Sequence[Turn], counter: TokenCounter
) -> int:
    """Tokens of the whole prompt as build_messages() writes it, with chat-template overhead."""
    messages = build_messages(question, sources, history)
    counts = counter.count_many([message["content"] for message in messages])
    return sum(counts) + MESSAGE_OVERHEAD_TOKENS * len(messages) + REPLY_PRIMING_TOKENS


def _source_frame_tokens(counter: TokenCounter) -> int:
    """Tokens of the tags around one source (its text and title are counted apart)."""
    empty = Source(number=99, document_id="", chunk_index=0, title="", text="", score=0.0)
    with_one, without = counter.count_many(
        [build_messages("?", [empty], [])[-1]["content"], build_messages("?", [], [])[-1]["content"]]
    )
    return max(with_one - without, 0)


def _cut_to_fit(text: str, limit: int, counter: TokenCounter) -> str | None:
    """The longest prefix of text ending at a sentence end within limit tokens; None if none."""
    ends = sorted({match.end() for match in _SENTENCE_END.finditer(text)})
    prefixes = [text[:end].rstrip() for end in ends]
    # Token counts grow with the prefix, so bisection finds the last prefix that fits
    # with a handful of counts instead of one per sentence.
    fits = bisect.bisect_right(prefixes, limit, key=counter.count)
    return prefixes[fits - 1] if fits else None
