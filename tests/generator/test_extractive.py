from __future__ import annotations

import pytest

from services.generator.backends.base import AnswerBackend
from services.generator.backends.extractive import (
    DEFAULT_MAX_UNMENTIONED,
    DEFAULT_MIN_OVERLAP,
    ExtractiveBackend,
    content_terms,
    split_sentences,
    stem,
)
from services.generator.prompt import NO_ANSWER_SENTENCE
from services.generator.sources import Answer, GenerationOptions, Source

POSTGRES_RUNBOOK = """# PostgreSQL backup runbook

## Schedule

Backups of the PostgreSQL database run nightly at 02:00 UTC with pg_basebackup.
WAL segments are archived to the `pg-wal-archive` bucket every five minutes. Backups
are retained for 30 days.

## Restoring

To restore the database, stop the application first.

1. Fetch the latest base backup from the bucket.
2. Run the restore script:

```bash
./restore.sh --target-time "2024-01-01 00:00:00"  # restores the database from backup
```

3. Check the row counts against the monitoring dashboard before reopening traffic.
"""

COFFEE_GUIDE = """Brewing coffee at the office
============================

- Use 60 grams of coffee per litre of water.
- The water temperature should be between 92 and 96 degrees Celsius; boiling water makes coffee bitter.
- A French press needs a coarse grind and four minutes of steeping.

Descale the espresso machine every month with citric acid.
"""

KUBERNETES_ONCALL = """# Kubernetes on-call guide

When a pod is in CrashLoopBackOff, read its logs with `kubectl logs --previous` first.
Page the platform team if more than three nodes are NotReady for ten minutes.
> Never drain a node during a deploy freeze without approval from the incident commander.

| Alert | Action |
|-------|--------|
| KubeNodeNotReady | Cordon the node and open an incident |
"""


def make_sources(*texts: tuple[str, str]) -> list[Source]:
    return [
        Source(
            number=number,
            document_id=f"doc-{title.lower().replace(' ', '-')}",
            chunk_index=0,
            title=title,
            text=text,
            score=1.0 - number / 10,
        )
        for number, (title, text) in enumerate(texts, start=1)
    ]


SOURCES = make_sources(
    ("Coffee", COFFEE_GUIDE),
    ("Postgres", POSTGRES_RUNBOOK),
    ("Kubernetes", KUBERNETES_ONCALL),
)


async def ask(
    question: str,
    sources: list[Source] = SOURCES,
    *,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    max_sentences: int = 3,
    max_documents: int = 1,
    max_unmentioned: float = DEFAULT_MAX_UNMENTIONED,
) -> Answer:
    backend = ExtractiveBackend(
        min_overlap=min_overlap,
        max_sentences=max_sentences,
        max_documents=max_documents,
        max_unmentioned=max_unmentioned,
    )
    return await backend.answer(question, sources, [], GenerationOptions())


def test_satisfies_the_backend_protocol() -> None:
    backend: AnswerBackend = ExtractiveBackend()
    assert backend.name == "extractive"


@pytest.mark.parametrize(
    ("question", "source_number", "expected_phrase"),
    [
        ("How often are PostgreSQL database backups taken?", 2, "run nightly at 02:00 UTC"),
        ("How long are backups retained?", 2, "retained for 30 days"),
        ("How do I restore the database?", 2, "stop the application first"),
        ("What temperature should the water be for coffee?", 1, "between 92 and 96 degrees"),
        ("How long should a French press steep?", 1, "four minutes of steeping"),
        ("What should I do when a pod is in CrashLoopBackOff?", 3, "kubectl logs --previous"),
        ("When do I page the platform team?", 3, "more than three nodes are NotReady"),
    ],
)
async def test_answers_in_corpus_questions_citing_the_right_source(
    question: str, source_number: int, expected_phrase: str
) -> None:
    answer = await ask(question)

    assert answer.answered, answer
    assert expected_phrase in answer.text
    assert [c.source_number for c in answer.citations] == [source_number]
    citation = answer.citations[0]
    assert citation.document_id == SOURCES[source_number - 1].document_id
    assert expected_phrase in citation.quote
    assert set(split_sentences(citation.quote)) <= set(split_sentences(SOURCES[source_number - 1].text))
    assert f"[{source_number}]" in answer.text
    assert answer.invalid_citation_numbers == []
    assert answer.backend == "extractive"


async def test_each_sentence_carries_its_marker_before_the_full_stop() -> None:
    answer = await ask("How long are backups retained?")

    assert answer.text == "Backups are retained for 30 days [2]."


@pytest.mark.parametrize(
    "question",
    [
        "What is the capital of Peru?",
        "Who won the football world cup in 2014?",
        "How do I restore my iPhone from an iCloud backup?",
        "What is it?",  # nothing but stopwords
        "",
    ],
)
async def test_questions_the_sources_do_not_answer_get_the_no_answer_sentence(question: str) -> None:
    answer = await ask(question)

    assert not answer.answered
    assert answer.text == NO_ANSWER_SENTENCE
    assert answer.citations == []


async def test_a_question_mostly_about_what_no_source_mentions_gets_no_answer() -> None:
    # "days" and "employees" are there; "vacation" and "year", most of the question, are not.
    sources = make_sources(
        ("Expenses", "Employees must submit expenses within 30 days. Receipts are required above 25 EUR.")
    )

    answer = await ask("How many vacation days do employees get per year?", sources=sources)

    assert not answer.answered
    assert answer.text == NO_ANSWER_SENTENCE


async def test_a_sentence_holding_one_of_the_questions_terms_does_not_answer_it() -> None:
    sources = make_sources(("Onboarding", "Take the security training in your first week."))

    assert not (await ask("How many sick days can I take?", sources=sources, max_unmentioned=1.0)).answered
    assert (await ask("When do I take the security training?", sources=sources)).answered


async def test_no_sources_means_no_answer() -> None:
    answer = await ask("How often are PostgreSQL backups taken?", sources=[])

    assert not answer.answered
    assert answer.text == NO_ANSWER_SENTENCE


async def test_code_fences_and_headings_are_never_quoted() -> None:
    # The shell comment in the fence and the "Restoring" heading both match the question's words.
    answer = await ask("How do I restore the database from a backup?", max_sentences=5)

    assert answer.answered
    assert "restore.sh" not in answer.text
    assert "Restoring" not in answer.text
    assert "runbook" not in answer.text


async def test_quotes_one_source_by_default_the_better_ranked_of_two_alike() -> None:
    sources = make_sources(
        ("Kubernetes", KUBERNETES_ONCALL),
        ("Old policy", "Backups were retained for 7 days until 2023."),
        ("Postgres", POSTGRES_RUNBOOK),
    )

    answer = await ask("How long are backups retained?", sources=sources)

    assert answer.text == "Backups were retained for 7 days until 2023 [2]."
    assert [c.source_number for c in answer.citations] == [2]


async def test_a_much_better_sentence_wins_over_a_better_ranked_source() -> None:
    sources = make_sources(
        ("Old policy", "Backups were kept once."),
        ("Postgres", "PostgreSQL backups are retained for 30 days."),
    )

    answer = await ask("How long are PostgreSQL backups retained?", sources=sources)

    assert [c.source_number for c in answer.citations] == [2]


async def test_cites_several_sources_in_order_of_first_appearance() -> None:
    sources = make_sources(
        ("Kubernetes", KUBERNETES_ONCALL),
        ("Old policy", "Backups were retained for 7 days until 2023."),
        ("Postgres", POSTGRES_RUNBOOK),
    )

    answer = await ask("How long are backups retained?", sources=sources, max_documents=2)

    assert (
        answer.text
        == "Backups were retained for 7 days until 2023 [2]. Backups are retained for 30 days [3]."
    )
    assert [c.source_number for c in answer.citations] == [2, 3]
    assert [c.quote for c in answer.citations] == [
        "Backups were retained for 7 days until 2023.",
        "Backups are retained for 30 days.",
    ]


async def test_max_sentences_caps_the_answer() -> None:
    answer = await ask("coffee water grind steeping", max_sentences=1, min_overlap=0.1)

    assert answer.text.count("[") == 1


async def test_the_same_sentence_in_two_overlapping_chunks_is_quoted_once() -> None:
    sentence = "Backups are retained for 30 days."
    sources = make_sources(("Postgres", sentence), ("Postgres again", f"Older text. {sentence}"))

    answer = await ask("How long are backups retained?", sources=sources)

    assert answer.text == "Backups are retained for 30 days [1]."
    assert [c.source_number for c in answer.citations] == [1]


async def test_a_better_ranked_source_wins_a_tie() -> None:
    sources = make_sources(
        ("A", "Backups are retained for 30 days."), ("B", "Backups are retained for 90 days.")
    )

    answer = await ask("How long are backups retained?", sources=sources, max_sentences=1)

    assert answer.citations[0].source_number == 1


async def test_bracketed_numbers_in_a_document_do_not_pose_as_citations() -> None:
    sources = make_sources(("Wiki", "Backups are retained for 30 days [12]."))

    answer = await ask("How long are backups retained?", sources=sources)

    assert answer.text == "Backups are retained for 30 days [1]."
    assert answer.citations[0].quote == "Backups are retained for 30 days [12]."


async def test_stream_deltas_concatenate_to_the_final_answer() -> None:
    backend = ExtractiveBackend()
    question = "How do I restore the database from a backup?"
    events = [event async for event in backend.stream(question, SOURCES, [], GenerationOptions())]

    *deltas, final = events
    assert isinstance(final, Answer)
    assert all(isinstance(delta, str) for delta in deltas)
    assert len(deltas) >= 2
    assert "".join(str(delta) for delta in deltas) == final.text
    assert final == await backend.answer(question, SOURCES, [], GenerationOptions())


async def test_stream_of_a_no_answer() -> None:
    backend = ExtractiveBackend()
    events = [
        e async for e in backend.stream("What is the capital of Peru?", SOURCES, [], GenerationOptions())
    ]

    assert events[:-1] == [NO_ANSWER_SENTENCE]
    final = events[-1]
    assert isinstance(final, Answer)
    assert not final.answered


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="min_overlap"):
        ExtractiveBackend(min_overlap=0)
    with pytest.raises(ValueError, match="max_sentences"):
        ExtractiveBackend(max_sentences=0)
    with pytest.raises(ValueError, match="max_documents"):
        ExtractiveBackend(max_documents=0)
    with pytest.raises(ValueError, match="max_unmentioned"):
        ExtractiveBackend(max_unmentioned=1.5)


@pytest.mark.parametrize(
    ("words", "stemmed"),
    [
        (["backups", "backup"], "backup"),
        (["restore", "restored", "restoring", "restores"], "restor"),
        (["run", "runs", "running"], "run"),
        (["policies", "policy"], "policy"),
        (["patches", "patch"], "patch"),
        (["classes", "class"], "class"),
        (["stopped", "stop"], "stop"),
        (["brewing", "brew"], "brew"),
    ],
)
def test_stem_brings_word_forms_together(words: list[str], stemmed: str) -> None:
    assert {stem(word) for word in words} == {stemmed}


@pytest.mark.parametrize(
    "word", ["status", "analysis", "pass", "fill", "need", "sing", "used", "pg_dump", "02"]
)
def test_stem_leaves_words_it_should_not_touch(word: str) -> None:
    assert stem(word) == word


def test_content_terms_drop_stopwords_and_single_letters() -> None:
    assert content_terms("How do I restore the PostgreSQL backups from S3?") == [
        "restor",
        "postgresql",
        "backup",
        "s3",
    ]


def test_split_sentences_reads_markdown() -> None:
    text = """# Title

First sentence, e.g. with an abbreviation. Second sentence!
A lazy continuation line.

- bullet one
- bullet two
  continued
* star bullet.

```python
print("not prose. Really.")
```

Setext heading
--------------

> Quoted advice. More advice?

| a | b |
|---|---|
| 1 | 2 |

***
Last line"""

    assert split_sentences(text) == [
        "First sentence, e.g. with an abbreviation.",
        "Second sentence!",
        "A lazy continuation line.",
        "bullet one",
        "bullet two continued",
        "star bullet.",
        "Quoted advice.",
        "More advice?",
        "a | b",
        "1 | 2",
        "Last line",
    ]


def test_an_unclosed_fence_hides_the_rest_of_the_chunk() -> None:
    assert split_sentences("Run this:\n```\nrm -rf /tmp/x. Then this.") == ["Run this:"]
