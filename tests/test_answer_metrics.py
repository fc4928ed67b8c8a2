"""The answer metrics and an item's scores, on hand-made answers whose right values are known."""

from __future__ import annotations

import pytest

from rag_cli.answers import metrics, report, scoring
from rag_cli.answers.claims import Claim, Judgment, Verdict
from rag_cli.answers.golden import GoldenItem
from rag_cli.answers.metrics import AnswerSentence
from rag_cli.answers.run import Asked
from services.generator.citations import resolve_citations
from services.generator.prompt import NO_ANSWER_SENTENCE
from services.generator.sources import Source

RUNBOOK, POLICY, HANDBOOK = "postgres-backup-runbook.md", "expense-policy.md", "oncall-handbook.md"
SOURCES = (
    Source(1, RUNBOOK, 0, "Backups", "The nightly base backup runs at 02:00 UTC. It takes 40 minutes.", 0.9),
    Source(2, POLICY, 3, "Hotels", "Tier 1 cities: up to 250 EUR per night.", 0.7),
    Source(3, RUNBOOK, 2, "Retention", "Base backups and WAL segments are kept for 14 days.", 0.6),
    Source(4, HANDBOOK, 1, "Rotation", "A rotation shift lasts one week.", 0.5),
)
SUPPORTED = Judgment(Verdict.SUPPORTED, "similarity 1.00")
NOT_SUPPORTED = Judgment(Verdict.NOT_SUPPORTED, "similarity 0.41")


def _item(
    answerable: bool = True,
    expected_answer: str | None = None,
    expected_documents: tuple[str, ...] | None = None,
) -> GoldenItem:
    question = "When do backups run and for how long are they kept?"
    return GoldenItem("q1", question, "default", answerable, expected_answer, expected_documents)


def _asked(item: GoldenItem, answer: str, cited: set[int], answered: bool = True) -> Asked:
    return Asked(
        item=item,
        answered=answered,
        answer=answer,
        sources=SOURCES,
        cited=frozenset(cited),
        timings_ms={"embed": 5.0, "retrieve": 20.0, "generate": 10.0, "total": 40.0},
        prompt_tokens=100,
        completion_tokens=20,
    )


def _score(asked: Asked, judgments: list[Judgment], similarity: float | None = None) -> scoring.ItemScore:
    sentences = scoring.sentences_of(asked)
    return scoring.score(asked, sentences, judgments, similarity, top_k=None)


# Sentences and their citations.


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            "Backups run nightly [1]. They are kept 14 days [3].",
            [("Backups run nightly.", (1,)), ("They are kept 14 days.", (3,))],
        ),
        ("Backups run nightly [1][3].", [("Backups run nightly.", (1, 3))]),
        ("Backups run nightly [1] [3].", [("Backups run nightly.", (1, 3))]),
        ("Backups run nightly [1, 3].", [("Backups run nightly.", (1, 3))]),
        ("Backups run nightly [1; 3].", [("Backups run nightly.", (1, 3))]),
        ("Backups run nightly [1-3].", [("Backups run nightly.", (1, 2, 3))]),
        # A marker after the full stop belongs to the sentence before it.
        (
            "Backups run nightly. [1] They are kept 14 days. [3]",
            [("Backups run nightly.", (1,)), ("They are kept 14 days.", (3,))],
        ),
        # A number that names no source is no citation; a sentence without markers cites nothing.
        (
            "Backups run nightly [9]. Hotels cost money.",
            [("Backups run nightly.", ()), ("Hotels cost money.", ())],
        ),
        # "e.g." does not end a sentence; list items are sentences of their own.
        (
            "Backups, e.g. the base backup, run nightly [1].\n\n- Kept 14 days [3]",
            [("Backups, e.g. the base backup, run nightly.", (1,)), ("Kept 14 days", (3,))],
        ),
        # A checkbox is not a citation.
        (
            "Backups run nightly [1]. [ ] Check the backup [3].",
            [("Backups run nightly.", (1,)), ("[ ] Check the backup.", (3,))],
        ),
    ],
)
def test_answer_sentences_read_the_generators_marker_forms(
    answer: str, expected: list[tuple[str, tuple[int, ...]]]
) -> None:
    sentences = metrics.answer_sentences(answer, SOURCES)

    assert [(s.text, s.cited) for s in sentences] == expected


def test_cited_numbers_agree_with_the_generators_own_citations() -> None:
    answer = "Backups run nightly [1]. Hotels are capped [2, 4]. Kept 14 days [3][9]."

    cited = {n for sentence in metrics.answer_sentences(answer, SOURCES) for n in sentence.cited}

    assert cited == {c.source_number for c in resolve_citations(answer, SOURCES)[1]}


# The metrics one by one.


def test_context_precision_recall_and_average_precision() -> None:
    documents = [RUNBOOK, POLICY, RUNBOOK, HANDBOOK]

    assert metrics.context_precision_at_k(documents, {RUNBOOK}, 4) == 0.5
    assert metrics.context_precision_at_k(documents, {RUNBOOK}, 1) == 1.0
    assert metrics.context_precision_at_k(documents[:2], {RUNBOOK}, 10) == 0.5  # fewer came back than k
    assert metrics.context_precision_at_k([], {RUNBOOK}, 5) == 0.0
    # Expected sources at ranks 1 and 3: (1/1 + 2/3) / 2.
    assert metrics.average_precision(documents, {RUNBOOK}) == pytest.approx(5 / 6)
    assert metrics.average_precision(documents, {"elsewhere.md"}) == 0.0
    assert metrics.context_recall(documents, {RUNBOOK, "elsewhere.md"}) == 0.5
    assert metrics.context_recall(documents, {RUNBOOK, HANDBOOK}) == 1.0
    with pytest.raises(ValueError, match="k must be at least 1"):
        metrics.context_precision_at_k(documents, {RUNBOOK}, 0)


def test_citation_precision_and_coverage() -> None:
    assert metrics.citation_precision([RUNBOOK, POLICY], {RUNBOOK}) == 0.5
    assert metrics.citation_precision([], {RUNBOOK}) is None
    sentences = [AnswerSentence("a", (1,)), AnswerSentence("b", ()), AnswerSentence("c", (2, 3))]
    assert metrics.citation_coverage(sentences) == pytest.approx(2 / 3)
    assert metrics.citation_coverage([]) is None


def test_faithfulness_counts_unjudged_as_no_pass() -> None:
    verdicts = [Verdict.SUPPORTED, Verdict.UNJUDGED, Verdict.NOT_SUPPORTED, Verdict.SUPPORTED]

    assert metrics.faithfulness(verdicts) == 0.5
    assert metrics.faithfulness([]) is None


@pytest.mark.parametrize(
    ("prediction", "reference", "f1"),
    [
        # Case, punctuation and the articles do not count.
        ("At 02:00 UTC.", "at 02:00 UTC", 1.0),
        ("The backup.", "a backup", 1.0),
        # One word in common of 3 and of 5: precision 1/3, recall 1/5.
        ("Backups run nightly", "Backups are kept 14 days", 0.25),
        ("nothing alike", "at 02:00 UTC", 0.0),
        ("", "", 1.0),
        ("the", "a backup", 0.0),
    ],
)
def test_token_f1_is_squads(prediction: str, reference: str, f1: float) -> None:
    assert metrics.token_f1(prediction, reference) == pytest.approx(f1, abs=1e-4)


def test_outcome_table() -> None:
    table = metrics.outcome_table([(True, True), (True, True), (True, False), (False, False), (False, True)])

    assert (table.answerable_answered, table.answerable_refused) == (2, 1)
    assert (table.unanswerable_answered, table.unanswerable_refused) == (1, 1)
    assert table.answered_rate == pytest.approx(2 / 3)
    assert table.refusal_rate == 0.5
    assert table.accuracy == 0.6
    assert metrics.outcome_table([(True, True)]).refusal_rate is None


# Whole items.


def test_a_perfect_answer() -> None:
    item = _item(expected_answer="At 02:00 UTC, kept 14 days.", expected_documents=(RUNBOOK,))
    asked = _asked(
        item, "The nightly base backup runs at 02:00 UTC [1]. Backups are kept for 14 days [3].", {1, 3}
    )

    scored = _score(asked, [SUPPORTED, SUPPORTED], similarity=0.9)

    assert scored.outcome_correct
    assert scored.context_precision == 0.5  # two of the four sources are the runbook's
    assert scored.average_precision == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert scored.context_recall == 1.0
    assert scored.citation_precision == 1.0
    assert scored.citation_coverage == 1.0
    assert scored.faithfulness == 1.0
    assert scored.answer_similarity == 0.9
    # "at 0200 utc kept 14 days" of the answer's 13 words and the expected 6.
    assert scored.token_f1 == pytest.approx(2 * (6 / 13) * (6 / 6) / (6 / 13 + 1))
    assert scored.failures == ()


def test_an_unfaithful_sentence() -> None:
    item = _item(expected_documents=(RUNBOOK,))
    asked = _asked(
        item, "The nightly base backup runs at 02:00 UTC [1]. It is copied to tape every hour [1].", {1}
    )

    scored = _score(asked, [SUPPORTED, NOT_SUPPORTED])

    assert scored.faithfulness == 0.5
    assert scored.citation_precision == 1.0
    assert scored.token_f1 is None  # no expected answer
    assert scored.failures == ("unsupported sentence (similarity 0.41): It is copied to tape every hour.",)
    assert [s.judgment.verdict for s in scored.sentences] == [Verdict.SUPPORTED, Verdict.NOT_SUPPORTED]


def test_a_sentence_without_citation_is_unsupported() -> None:
    asked = _asked(_item(), "The nightly base backup runs at 02:00 UTC [1]. Backups are great.", {1})
    sentences = scoring.sentences_of(asked)

    claims = [scoring.claim_of(asked, sentence) for sentence in sentences]

    assert claims[1] is None
    assert claims[0] == Claim("The nightly base backup runs at 02:00 UTC.", (SOURCES[0].text,))
    scored = scoring.score(asked, sentences, [SUPPORTED, scoring.UNCITED], None, top_k=None)
    assert scored.citation_coverage == 0.5
    assert scored.faithfulness == 0.5
    assert scored.failures == ("unsupported sentence (no citation): Backups are great.",)


def test_a_wrong_citation() -> None:
    item = _item(expected_documents=(RUNBOOK,))
    asked = _asked(
        item, "The nightly base backup runs at 02:00 UTC [1]. Hotels cost up to 250 EUR [2].", {1, 2}
    )

    scored = _score(asked, [SUPPORTED, SUPPORTED])

    assert scored.citation_precision == 0.5
    assert scored.failures == (f"wrong citation: [2] is {POLICY}, expected {RUNBOOK}",)


def test_a_refusal_of_an_answerable_question() -> None:
    item = _item(expected_answer="At 02:00 UTC.", expected_documents=(RUNBOOK,))
    asked = _asked(item, NO_ANSWER_SENTENCE, set(), answered=False)

    scored = _score(asked, [])

    assert not scored.outcome_correct
    assert scored.sentences == ()
    # What was retrieved is still measured; the answer's own metrics do not apply, its correctness is 0.
    assert scored.context_recall == 1.0
    assert (scored.citation_precision, scored.citation_coverage, scored.faithfulness) == (None, None, None)
    assert (scored.token_f1, scored.answer_similarity) == (0.0, 0.0)
    assert scored.failures == ("refused an answerable question",)


def test_an_answered_unanswerable_question() -> None:
    asked = _asked(_item(answerable=False), "Hotels cost up to 250 EUR per night [2].", {2})

    scored = _score(asked, [SUPPORTED])

    assert not scored.outcome_correct
    assert (scored.context_precision, scored.citation_precision) == (None, None)
    assert scored.faithfulness == 1.0
    assert scored.failures == ("answered an unanswerable question: Hotels cost up to 250 EUR per night.",)


def test_summary_averages_only_where_a_metric_applies() -> None:
    perfect = _score(
        _asked(_item(expected_documents=(RUNBOOK,)), "The nightly base backup runs at 02:00 UTC [1].", {1}),
        [SUPPORTED],
    )
    refused = _score(_asked(_item(answerable=False), NO_ANSWER_SENTENCE, set(), answered=False), [])

    summary = report.summary([perfect, refused])

    assert summary["outcome"]["accuracy"] == 1.0
    assert summary["outcome"]["table"] == {
        "answerable": {"answered": 1, "refused": 0},
        "unanswerable": {"answered": 0, "refused": 1},
    }
    assert summary["metrics"]["citation_precision"] == {"mean": 1.0, "items": 1}
    assert summary["metrics"]["token_f1"] == {"mean": None, "items": 0}
    assert summary["latency_ms"]["total"] == {"p50": 40.0, "p95": 40.0}
    assert next(iter(summary["latency_ms"])) == "total"
    assert summary["tokens"] == {"prompt": 200, "completion": 40, "total": 240, "per_question": 120.0}
    assert summary["failing_items"] == 0
