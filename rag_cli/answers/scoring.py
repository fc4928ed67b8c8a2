"""One golden item's scores, from its Ask, its sentences' judgments and its answer's similarity.

The metrics themselves are in metrics.py; this is where they meet the item: which ones apply to it,
what a refusal scores, and, for the report, why an item failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rag_cli import render
from rag_cli.answers import metrics
from rag_cli.answers.claims import Claim, Judgment, Verdict
from rag_cli.answers.metrics import AnswerSentence
from rag_cli.answers.run import Asked

# What a sentence citing nothing gets without being judged.
UNCITED = Judgment(Verdict.NOT_SUPPORTED, "no citation")


@dataclass(frozen=True)
class JudgedSentence:
    text: str
    cited: tuple[int, ...]
    judgment: Judgment

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "cited": list(self.cited),
            "verdict": str(self.judgment.verdict),
            "detail": self.judgment.detail,
        }


def sentences_of(asked: Asked) -> list[AnswerSentence]:
    """The sentences of an answer; none for a refusal, whose text is not an answer."""
    return metrics.answer_sentences(asked.answer, asked.sources) if asked.answered else []


def claim_of(asked: Asked, sentence: AnswerSentence) -> Claim | None:
    """What a judge is asked about the sentence; None when it cites nothing (unsupported as it is)."""
    if not sentence.cited:
        return None
    texts = {source.number: source.text for source in asked.sources}
    return Claim(sentence.text, tuple(texts[number] for number in sentence.cited))


@dataclass(frozen=True)
class ItemScore:
    asked: Asked
    outcome_correct: bool
    sentences: tuple[JudgedSentence, ...]
    # None where the metric does not apply to the item (metrics.py).
    context_precision: float | None
    average_precision: float | None
    context_recall: float | None
    citation_precision: float | None
    citation_coverage: float | None
    faithfulness: float | None
    token_f1: float | None
    answer_similarity: float | None
    # Why the item fails, in words, for the report; empty when it does not.
    failures: tuple[str, ...]

    def metric(self, name: str) -> float | None:
        value: float | None = getattr(self, name)
        return value

    def to_json(self) -> dict[str, Any]:
        asked, item = self.asked, self.asked.item
        return {
            **item.to_json(),
            "outcome": "answered" if asked.answered else "refused",
            "outcome_correct": self.outcome_correct,
            "answer": asked.answer,
            "sources": [
                {
                    "number": source.number,
                    "document_id": source.document_id,
                    "chunk_index": source.chunk_index,
                    "cited": source.number in asked.cited,
                    "text": source.text,
                }
                for source in asked.sources
            ],
            "sentences": [sentence.to_json() for sentence in self.sentences],
            "metrics": {name: self.metric(name) for name in ITEM_METRICS},
            "timings_ms": asked.timings_ms,
            "usage": {"prompt_tokens": asked.prompt_tokens, "completion_tokens": asked.completion_tokens},
            "failures": list(self.failures),
        }


# The per-item metrics, as ItemScore and the JSON name them.
ITEM_METRICS = (
    "context_precision",
    "average_precision",
    "context_recall",
    "citation_precision",
    "citation_coverage",
    "faithfulness",
    "token_f1",
    "answer_similarity",
)


def score(
    asked: Asked,
    sentences: Sequence[AnswerSentence],
    judgments: Sequence[Judgment],
    answer_similarity: float | None,
    top_k: int | None,
) -> ItemScore:
    """The item's scores. `judgments` are its sentences', in order (UNCITED for those citing nothing);
    `answer_similarity` the cosine of the answer to the expected one, when the item has one and was
    answered; `top_k` the k of context precision (None: every source the Ask returned)."""
    item = asked.item
    judged = tuple(
        JudgedSentence(sentence.text, sentence.cited, judgment)
        for sentence, judgment in zip(sentences, judgments, strict=True)
    )
    documents = [source.document_id for source in asked.sources]
    expected = item.expected_documents
    context_precision = average_precision = context_recall = citation_precision = None
    if expected is not None:
        context_precision = metrics.context_precision_at_k(
            documents, expected, top_k or max(len(documents), 1)
        )
        average_precision = metrics.average_precision(documents, expected)
        context_recall = metrics.context_recall(documents, expected)
        cited_documents = [source.document_id for source in asked.cited_sources()]
        citation_precision = metrics.citation_precision(cited_documents, expected) if asked.answered else None
    token_f1 = similarity = None
    if item.expected_answer is not None:
        # A refusal gives no answer: nothing of the expected one is in it.
        answer = metrics.strip_markers(asked.answer)
        token_f1 = metrics.token_f1(answer, item.expected_answer) if asked.answered else 0.0
        similarity = answer_similarity if asked.answered else 0.0
    return ItemScore(
        asked=asked,
        outcome_correct=metrics.outcome_correct(item.answerable, asked.answered),
        sentences=judged,
        context_precision=context_precision,
        average_precision=average_precision,
        context_recall=context_recall,
        citation_precision=citation_precision,
        citation_coverage=metrics.citation_coverage(sentences) if asked.answered else None,
        faithfulness=metrics.faithfulness([j.verdict for j in judgments]) if asked.answered else None,
        token_f1=token_f1,
        answer_similarity=similarity,
        failures=tuple(_failures(asked, judged)),
    )


def _failures(asked: Asked, sentences: Sequence[JudgedSentence]) -> list[str]:
    item = asked.item
    if item.answerable and not asked.answered:
        return ["refused an answerable question"]
    if not item.answerable and asked.answered:
        return [f"answered an unanswerable question: {render.snippet(metrics.strip_markers(asked.answer))}"]
    failures: list[str] = []
    if item.expected_documents is not None:
        expected = ", ".join(item.expected_documents)
        failures += [
            f"wrong citation: [{source.number}] is {source.document_id}, expected {expected}"
            for source in asked.cited_sources()
            if source.document_id not in item.expected_documents
        ]
    for sentence in sentences:
        if sentence.judgment.verdict is Verdict.SUPPORTED:
            continue
        kind = "unjudged" if sentence.judgment.verdict is Verdict.UNJUDGED else "unsupported"
        failures.append(f"{kind} sentence ({sentence.judgment.detail}): {render.snippet(sentence.text, 100)}")
    return failures
