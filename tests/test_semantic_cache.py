"""The semantic answer cache: its guard against opposite meanings, and its lookup by embedding."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from gateway.answer_cache import AnswerCache, cache_key, normalise_question, settings_key
from gateway.config import GatewaySettings
from gateway.semantic_cache import QUESTIONS_PER_SETTINGS, meaning_markers
from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2

DIMENSION = 8
TTL_S = 3600.0


def _at(similarity: float) -> list[float]:
    """A unit vector at exactly this cosine similarity to BASE."""
    return [similarity, math.sqrt(max(0.0, 1 - similarity * similarity))] + [0.0] * (DIMENSION - 2)


BASE = _at(1.0)


def _request(
    question: str,
    namespace: str = "docs",
    retrieval: gateway_pb2.RetrievalOptions | None = None,
    generation: generator_pb2.GenerationOptions | None = None,
    history: Sequence[common_pb2.ChatTurn] = (),
) -> gateway_pb2.AskRequest:
    return gateway_pb2.AskRequest(
        namespace=namespace, question=question, retrieval=retrieval, generation=generation, history=history
    )


def _answer(text: str) -> gateway_pb2.AskResponse:
    return gateway_pb2.AskResponse(answer=text, outcome=generator_pb2.ANSWER_OUTCOME_ANSWERED)


def _cached(
    cache: AnswerCache, request: gateway_pb2.AskRequest, version: int, vector: list[float], answer: str
) -> None:
    """As the gateway caches a fresh answer: under its exact key, findable by its embedding."""
    key = cache_key(request, version)
    cache.put(key, _answer(answer))
    cache.put_similar(settings_key(request, version), request.question, vector, key)


def _similar(
    cache: AnswerCache, request: gateway_pb2.AskRequest, version: int, vector: list[float]
) -> str | None:
    found = cache.get_similar(settings_key(request, version), request.question, vector)
    return None if found is None else found.response.answer


def _same_markers(first: str, second: str) -> bool:
    return meaning_markers(normalise_question(first)) == meaning_markers(normalise_question(second))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Does X increase Y?", "Does X not increase Y?"),
        ("X increases Y", "X does not increase Y"),
        ("X increases Y", "X doesn't increase Y"),
        ("X increases Y", "X never increases Y"),
        ("Can aspirin prevent strokes?", "Aspirin cannot prevent strokes"),
        ("Statins reduce mortality", "Statins fail to reduce mortality"),
        ("Treatment with or without steroids", "Treatment with steroids"),
        ("Neither drug works", "Either drug works"),
        ("Does X increase Y?", "Does X decrease Y?"),
        ("Is the risk higher in smokers?", "Is the risk lower in smokers?"),
        ("More sleep helps memory", "Less sleep helps memory"),
        ("Exercise raises HDL", "Exercise reduces HDL"),
        ("Is there no refund?", "Is there a refund?"),
        ("Are refunds paid within 14 days?", "Are refunds paid within 30 days?"),
        ("What changed in version 2.1?", "What changed in version 2.2?"),
        ("Do two doses protect?", "Do three doses protect?"),
    ],
)
def test_questions_that_differ_in_negation_direction_or_number_are_kept_apart(
    first: str, second: str
) -> None:
    assert not _same_markers(first, second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("What is the office wifi password?", "What's the password for the office wifi?"),
        ("X does not increase Y", "X doesn't increase Y"),
        ("Aspirin cannot prevent strokes", "Aspirin can't prevent strokes"),
        ("Does exercise raise HDL?", "Does exercise increase HDL cholesterol?"),
        ("Are refunds paid within 14 days?", "Is a refund paid within 14 days?"),
        ("How many staff: 1,000?", "How many staff: 1000?"),
    ],
)
def test_paraphrases_keep_their_markers(first: str, second: str) -> None:
    assert _same_markers(first, second)


def test_a_paraphrase_within_the_threshold_takes_the_cached_answer() -> None:
    cache = AnswerCache(10, TTL_S, semantic_min_similarity=0.9)
    _cached(cache, _request("What is the office wifi password?"), 3, BASE, "heron-42")

    near = _similar(cache, _request("What's the password for the office wifi?"), 3, _at(0.95))
    far = _similar(cache, _request("Who runs the office wifi?"), 3, _at(0.85))

    assert near == "heron-42"
    assert far is None


def test_the_similarity_of_the_hit_is_reported() -> None:
    cache = AnswerCache(10, TTL_S, semantic_min_similarity=0.9)
    request = _request("What is the office wifi password?")
    _cached(cache, request, 3, BASE, "heron-42")

    found = cache.get_similar(settings_key(request, 3), "what's the office wifi password", _at(0.93))

    assert found is not None
    assert found.similarity == pytest.approx(0.93, abs=1e-5)


def test_the_most_similar_question_wins() -> None:
    cache = AnswerCache(10, TTL_S, semantic_min_similarity=0.8)
    _cached(cache, _request("Which network do guests use?"), 1, _at(0.85), "further")
    _cached(cache, _request("Which network do visitors use?"), 1, _at(0.97), "nearest")

    assert _similar(cache, _request("Which network can guests use?"), 1, BASE) == "nearest"


def test_a_negated_question_never_takes_the_answer_even_at_099() -> None:
    cache = AnswerCache(10, TTL_S, semantic_min_similarity=0.5)
    _cached(cache, _request("X increases Y"), 1, BASE, "yes, it does")

    assert _similar(cache, _request("X does not increase Y"), 1, _at(0.99)) is None
    assert _similar(cache, _request("X decreases Y"), 1, _at(0.999)) is None
    assert _similar(cache, _request("X increases Y a lot"), 1, _at(0.99)) == "yes, it does"


def test_a_negated_question_finds_a_less_similar_one_of_its_own_meaning() -> None:
    cache = AnswerCache(10, TTL_S, semantic_min_similarity=0.8)
    _cached(cache, _request("X increases Y"), 1, _at(0.99), "it does")
    _cached(cache, _request("X doesn't increase Y"), 1, _at(0.9), "it does not")

    assert _similar(cache, _request("X does not increase Y"), 1, BASE) == "it does not"


def test_different_numbers_never_hit() -> None:
    cache = AnswerCache(10, TTL_S, semantic_min_similarity=0.5)
    _cached(cache, _request("Are refunds paid within 14 days?"), 1, BASE, "yes")

    assert _similar(cache, _request("Are refunds paid within 30 days?"), 1, _at(0.999)) is None
    assert _similar(cache, _request("Is a refund paid within 14 days?"), 1, _at(0.95)) == "yes"


@pytest.mark.parametrize(
    ("other", "other_version"),
    [
        (_request("What is the wifi password?", namespace="elsewhere"), 1),
        (_request("What is the wifi password?"), 2),
        (_request("What is the wifi password?", retrieval=gateway_pb2.RetrievalOptions(top_k=1)), 1),
        (_request("What is the wifi password?", generation=generator_pb2.GenerationOptions(max_tokens=9)), 1),
        (
            _request(
                "What is the wifi password?",
                history=[common_pb2.ChatTurn(role=common_pb2.CHAT_ROLE_USER, content="Hello")],
            ),
            1,
        ),
    ],
    ids=["namespace", "index version", "retrieval", "generation", "history"],
)
def test_another_namespace_version_or_settings_never_hits(
    other: gateway_pb2.AskRequest, other_version: int
) -> None:
    cache = AnswerCache(10, TTL_S, semantic_min_similarity=0.5)
    _cached(cache, _request("What is the office wifi password?"), 1, BASE, "heron-42")

    assert _similar(cache, other, other_version, BASE) is None
    assert _similar(cache, _request("What is the wifi password?"), 1, BASE) == "heron-42"


def test_the_read_your_writes_token_is_not_part_of_the_settings() -> None:
    plain = _request("q")
    with_token = _request("q", retrieval=gateway_pb2.RetrievalOptions(min_index_version=7))

    assert settings_key(plain, 7) == settings_key(with_token, 7)
    assert cache_key(plain, 7) != cache_key(_request("another q"), 7)
    assert cache_key(plain, 7) == cache_key(_request("  Q "), 7)


def test_an_expired_answer_misses() -> None:
    cache = AnswerCache(10, 0.05, semantic_min_similarity=0.5)
    _cached(cache, _request("What is the office wifi password?"), 1, BASE, "heron-42")
    assert _similar(cache, _request("What's the office wifi password?"), 1, BASE) == "heron-42"

    time.sleep(0.1)

    assert _similar(cache, _request("What's the office wifi password?"), 1, BASE) is None


def test_an_evicted_answer_misses() -> None:
    cache = AnswerCache(2, TTL_S, semantic_min_similarity=0.5)
    _cached(cache, _request("What is the office wifi password?"), 1, BASE, "heron-42")
    _cached(cache, _request("Who cleans the office?", namespace="a"), 1, BASE, "a")
    _cached(cache, _request("Who cleans the office?", namespace="b"), 1, BASE, "b")

    assert _similar(cache, _request("What's the office wifi password?"), 1, BASE) is None


def test_each_settings_key_keeps_its_latest_questions() -> None:
    cache = AnswerCache(10 * QUESTIONS_PER_SETTINGS, TTL_S, semantic_min_similarity=0.99)
    asked = QUESTIONS_PER_SETTINGS + 1
    # Each question's vector points its own way; the oldest goes when one more than the bound comes.
    for index in range(asked):
        _cached(cache, _request(f"question {index}"), 1, _axis(index, asked), f"answer {index}")

    assert cache.get(cache_key(_request("question 0"), 1)) is not None, "its answer is still cached"
    assert _similar(cache, _request("question 0"), 1, _axis(0, asked)) is None
    assert _similar(cache, _request("question 1"), 1, _axis(1, asked)) == "answer 1"
    assert _similar(cache, _request(f"question {asked - 1}"), 1, _axis(asked - 1, asked))


def test_a_question_asked_again_replaces_its_entry() -> None:
    cache = AnswerCache(10, TTL_S, semantic_min_similarity=0.9)
    _cached(cache, _request("What is the office wifi password?"), 1, BASE, "old")
    _cached(cache, _request("What is the office wifi password?"), 1, BASE, "new")

    assert _similar(cache, _request("What's the office wifi password?"), 1, BASE) == "new"


def _axis(index: int, dimension: int) -> list[float]:
    return [1.0 if i == index else 0.0 for i in range(dimension)]


def test_off_unless_set_and_never_without_the_answer_cache() -> None:
    assert not AnswerCache(10, TTL_S).semantic
    assert AnswerCache(10, TTL_S, semantic_min_similarity=0.9).semantic
    assert not AnswerCache(0, TTL_S, semantic_min_similarity=0.9).semantic


def test_vectors_need_not_be_unit_length() -> None:
    cache = AnswerCache(10, TTL_S, semantic_min_similarity=0.9)
    _cached(cache, _request("What is the office wifi password?"), 1, [3.0 * x for x in BASE], "heron-42")

    assert _similar(cache, _request("What's the office wifi password?"), 1, [0.5 * x for x in _at(0.95)])


@pytest.mark.parametrize("value", ["0", "-0.5", "1.01", "nan"])
def test_the_threshold_must_be_a_cosine_similarity_above_zero(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SEMANTIC_CACHE_MIN_SIMILARITY", value)
    with pytest.raises(ValidationError, match="GATEWAY_SEMANTIC_CACHE_MIN_SIMILARITY must be more than 0"):
        GatewaySettings()


def test_the_threshold_is_unset_by_default_and_takes_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_SEMANTIC_CACHE_MIN_SIMILARITY", raising=False)
    assert GatewaySettings().semantic_cache_min_similarity is None
    monkeypatch.setenv("GATEWAY_SEMANTIC_CACHE_MIN_SIMILARITY", "1")
    assert GatewaySettings().semantic_cache_min_similarity == 1.0
