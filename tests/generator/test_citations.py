from __future__ import annotations

import pytest

from services.generator.citations import MAX_RANGE_SPAN, resolve_citations
from services.generator.sources import Citation, Source


def make_sources(*numbers: int) -> list[Source]:
    return [
        Source(number=n, document_id=f"doc-{n}", chunk_index=n * 10, title=f"T{n}", text="...", score=0.5)
        for n in numbers
    ]


SOURCES = make_sources(1, 2, 3)


def cited(text: str, sources: list[Source] = SOURCES) -> list[int]:
    return [c.source_number for c in resolve_citations(text, sources)[1]]


def test_valid_markers_are_kept_and_resolved_to_their_sources() -> None:
    text, citations, invalid = resolve_citations("Backups run nightly [2].", SOURCES)

    assert text == "Backups run nightly [2]."
    assert citations == [Citation(source_number=2, document_id="doc-2", chunk_index=20, quote="")]
    assert invalid == []


@pytest.mark.parametrize(
    ("model_output", "expected_text"),
    [
        ("Backups run nightly [9].", "Backups run nightly."),
        ("Backups run nightly [9]. They are kept [1].", "Backups run nightly. They are kept [1]."),
        ("Backups run nightly [9], and are kept [1].", "Backups run nightly, and are kept [1]."),
        ("Backups run [9] nightly [1].", "Backups run nightly [1]."),
        ("Backups[9]run nightly [1].", "Backups run nightly [1]."),
        ("[9] Backups run nightly [1].", "Backups run nightly [1]."),
        ("Backups run nightly [9]\n- kept [1]", "Backups run nightly\n- kept [1]"),
        ("Backups run nightly [0] [4][5].", "Backups run nightly."),
        ("  Backups run nightly [1].  \n", "Backups run nightly [1]."),
    ],
)
def test_markers_to_missing_sources_are_removed_and_the_space_tidied(
    model_output: str, expected_text: str
) -> None:
    assert resolve_citations(model_output, SOURCES)[0] == expected_text


def test_invalid_numbers_are_reported_sorted_and_once() -> None:
    _, citations, invalid = resolve_citations("A [9]. B [7][9]. C [0]. D [2].", SOURCES)

    assert invalid == [0, 7, 9]
    assert [c.source_number for c in citations] == [2]


@pytest.mark.parametrize(
    ("model_output", "expected_numbers"),
    [
        ("Both say so [1, 3].", [1, 3]),
        ("Both say so [3,1].", [3, 1]),
        ("Both say so [1; 3].", [1, 3]),
        ("Both say so [1][3].", [1, 3]),
        ("Both say so [1] [3].", [1, 3]),
        ("All say so [1-3].", [1, 2, 3]),
        ("All say so [1–3].", [1, 2, 3]),
        ("All say so [3-1].", [1, 2, 3]),
        ("All say so [ 1 - 2 , 3 ].", [1, 2, 3]),
    ],
)
def test_lists_ranges_and_runs_of_markers(model_output: str, expected_numbers: list[int]) -> None:
    text, citations, invalid = resolve_citations(model_output, SOURCES)

    assert text == model_output
    assert [c.source_number for c in citations] == expected_numbers
    assert invalid == []


@pytest.mark.parametrize(
    ("model_output", "expected_text", "expected_invalid"),
    [
        ("Both say so [1, 7].", "Both say so [1].", [7]),
        ("Both say so [7, 1].", "Both say so [1].", [7]),
        ("They say so [2-5].", "They say so [2, 3].", [4, 5]),
        ("They say so [1][7][3].", "They say so [1][3].", [7]),
    ],
)
def test_a_marker_keeps_only_its_valid_numbers(
    model_output: str, expected_text: str, expected_invalid: list[int]
) -> None:
    text, _, invalid = resolve_citations(model_output, SOURCES)

    assert text == expected_text
    assert invalid == expected_invalid


def test_a_huge_range_is_not_expanded() -> None:
    huge = 10**12
    text, citations, invalid = resolve_citations(f"See [1-{huge}].", SOURCES)

    assert text == "See [1, 2, 3]."
    assert [c.source_number for c in citations] == [1, 2, 3]
    assert invalid == [huge]
    assert huge > MAX_RANGE_SPAN


def test_duplicates_give_one_citation_in_order_of_first_appearance() -> None:
    assert cited("First [2]. Then [1]. Again [2][2]. And [1, 2].") == [2, 1]


def test_markers_match_source_numbers_not_positions() -> None:
    sources = make_sources(2, 5)

    text, citations, invalid = resolve_citations("Yes [5]. No [1].", sources)

    assert text == "Yes [5]. No."
    assert [(c.source_number, c.document_id) for c in citations] == [(5, "doc-5")]
    assert invalid == [1]


def test_no_sources_means_every_marker_is_invalid() -> None:
    assert resolve_citations("Backups run nightly [1][2].", []) == ("Backups run nightly.", [], [1, 2])


@pytest.mark.parametrize(
    "model_output",
    [
        "Use `items[0]` and `items[9]` here [1].",
        "Run this [1]:\n\n```python\nprint(rows[0], rows[42])\n```\n",
        "A [link](https://example.com) and a [note] and a footnote[^4] [1].",
        "Nothing cited here.",
    ],
)
def test_brackets_in_code_links_and_plain_text_are_not_citations(model_output: str) -> None:
    text, _, invalid = resolve_citations(model_output, SOURCES)

    assert text == model_output.strip()
    assert invalid == []


def test_an_unclosed_fence_protects_to_the_end() -> None:
    text, _, invalid = resolve_citations("Run [1]:\n```\nx = rows[7]", SOURCES)

    assert text == "Run [1]:\n```\nx = rows[7]"
    assert invalid == []
