"""The reranker trainer's data: the held-back split, the pairs drawn from candidates, validation nDCG."""

from __future__ import annotations

import pytest

from rag_cli.reranker.judgments import (
    EASY_NEGATIVES_FROM,
    Candidate,
    JudgedQuery,
    split_queries,
    training_pairs,
)
from rag_cli.reranker.validation import reordered, validate


def query(number: int, gains: dict[str, int] | None = None) -> JudgedQuery:
    return JudgedQuery(f"q{number}", f"question {number}", gains or {"relevant": 1})


def candidate(document_id: str, chunk_index: int = 0) -> Candidate:
    return Candidate(document_id, chunk_index, f"text of {document_id}#{chunk_index}")


def test_the_split_is_fixed_by_the_seed_and_never_overlaps() -> None:
    queries = [query(n) for n in range(50)]

    first = split_queries(queries, 0.2, seed=7)
    again = split_queries(list(reversed(queries)), 0.2, seed=7)
    other = split_queries(queries, 0.2, seed=8)

    assert len(first.validation) == 10
    assert len(first.train) == 40
    assert first == again  # the input order does not matter, only the seed
    assert other.validation != first.validation
    assert not {q.id for q in first.train} & {q.id for q in first.validation}


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1])
def test_a_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_queries([query(n) for n in range(10)], share, seed=1)


def test_too_few_queries_to_keep_some_back_are_refused() -> None:
    with pytest.raises(ValueError, match="too few"):
        split_queries([query(1)], 0.2, seed=1)


def test_pairs_are_the_positives_and_the_best_ranked_negatives() -> None:
    judged = query(1, {"relevant": 2, "judged-not": 0})
    found = [
        candidate("judged-not"),
        candidate("relevant", 0),
        candidate("other-1"),
        candidate("relevant", 1),
        candidate("other-2"),
    ]

    pairs = training_pairs([judged], {"q1": found}, negatives_per_query=4, seed=1)

    # Half the negatives are the best-ranked; nothing lies far enough down for the easy half.
    assert [(p.passage, p.label) for p in pairs] == [
        ("text of relevant#0", 1.0),
        ("text of relevant#1", 1.0),
        ("text of judged-not#0", 0.0),
        ("text of other-1#0", 0.0),
    ]


def test_the_easy_half_of_the_negatives_comes_from_far_down_chosen_by_the_seed() -> None:
    judged = query(1, {"relevant": 1})
    found = [candidate("relevant"), *(candidate(f"other-{rank}") for rank in range(1, 60))]

    pairs = training_pairs([judged], {"q1": found}, negatives_per_query=4, seed=3)
    again = training_pairs([judged], {"q1": found}, negatives_per_query=4, seed=3)
    other_seed = training_pairs([judged], {"q1": found}, negatives_per_query=4, seed=4)

    negatives = [p.passage.removeprefix("text of ").removesuffix("#0") for p in pairs if p.label == 0]
    assert negatives[:2] == ["other-1", "other-2"]
    assert all(int(n.split("-")[1]) > EASY_NEGATIVES_FROM for n in negatives[2:])
    assert len(negatives) == 4
    assert pairs == again
    assert pairs != other_seed


def test_chunk_judgments_make_only_the_judged_chunk_positive() -> None:
    judged = JudgedQuery("q1", "question", {"relevant": 1}, relevant_chunks=frozenset({("relevant", 1)}))
    found = [candidate("relevant", 0), candidate("relevant", 1)]

    pairs = training_pairs([judged], {"q1": found}, negatives_per_query=5, seed=1)

    assert [(p.passage, p.label) for p in pairs] == [("text of relevant#1", 1.0), ("text of relevant#0", 0.0)]


def test_a_query_without_a_positive_candidate_gives_no_pairs() -> None:
    assert training_pairs([query(1)], {"q1": [candidate("other")]}, negatives_per_query=3, seed=1) == []


def test_reranking_reorders_only_the_first_n_candidates() -> None:
    found = [candidate("a"), candidate("b"), candidate("c"), candidate("d")]

    ordered = reordered(
        found, [0.1, 0.9], top_n=2, order=lambda s: sorted(range(len(s)), key=lambda i: -s[i])
    )

    assert [c.document_id for c in ordered] == ["b", "a", "c", "d"]


def test_validation_scores_the_fused_and_the_reranked_document_ranking() -> None:
    judged = query(1, {"relevant": 1})
    found = {"q1": [candidate("decoy"), candidate("relevant")]}
    by_score = lambda s: sorted(range(len(s)), key=lambda i: -s[i])  # noqa: E731

    result = validate([judged], found, {"q1": [0.0, 5.0]}, top_n=2, order=by_score)

    assert result.queries == 1
    assert result.fused_ndcg == pytest.approx(1 / 1.5849625)  # the relevant document at rank 2
    assert result.reranked_ndcg == pytest.approx(1.0)
    assert result.gain == pytest.approx(1 - 1 / 1.5849625)
