"""Relevance feedback in the store and through the servicer, on the real PostgreSQL.

A submission is stored whole or not at all, listed by id a page at a time
(pages bounded in bytes too), kept apart per namespace, and outlives the
documents it judges.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest

from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.deferred import Deferred
from services.common.errors import InvalidArgument
from services.retriever.limits import MAX_FEEDBACK_ITEMS, MAX_FEEDBACK_PAGE_BYTES
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import ChunkStore, feedback
from services.retriever.store.records import (
    AnswerRating,
    Feedback,
    FeedbackInput,
    FeedbackItem,
    FeedbackLabel,
)
from tests.retriever.serving import refusal, serving, violated_field
from tests.retriever.test_documents import document

RELEVANT, NOT_RELEVANT = FeedbackLabel.RELEVANT, FeedbackLabel.NOT_RELEVANT


def submission(
    question: str = "How long are backups kept?",
    *items: tuple[str, int, FeedbackLabel],
    rating: AnswerRating | None = None,
) -> FeedbackInput:
    judged = [FeedbackItem(*item) for item in items] or [FeedbackItem("a", 0, RELEVANT)]
    return FeedbackInput(question, judged, rating)


async def list_all(store: ChunkStore, namespace: str, page_size: int) -> list[list[Feedback]]:
    """Every page of the namespace's feedback, checking each page's token leads to the next."""
    pages: list[list[Feedback]] = []
    after = 0
    while True:
        page = await store.list_feedback(namespace, page_size=page_size, after=after)
        pages.append(page.feedback)
        if page.next_after is None:
            return pages
        assert page.next_after == page.feedback[-1].feedback_id
        after = page.next_after


async def stored_rows(db: asyncpg.Connection, namespace: str) -> tuple[int, int]:
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM rag_feedback WHERE namespace = $1) AS feedback,"
        " (SELECT count(*) FROM rag_feedback_items WHERE namespace = $1) AS items",
        namespace,
    )
    return counts["feedback"], counts["items"]


@pytest.fixture
async def with_documents(store: ChunkStore, namespace: str) -> str:
    """The test's namespace, holding documents "a" and "b"."""
    await store.upsert(namespace, [document("a"), document("b")])
    return namespace


async def test_submissions_are_listed_whole_in_pages_by_id(store: ChunkStore, with_documents: str) -> None:
    namespace = with_documents
    ids = [
        await store.submit_feedback(
            namespace,
            submission(f"question {i}", ("b", 2, NOT_RELEVANT), ("a", i, RELEVANT), rating=AnswerRating.GOOD),
        )
        for i in range(5)
    ]
    unrated = await store.submit_feedback(namespace, submission("no rating", ("a", 0, NOT_RELEVANT)))

    pages = await list_all(store, namespace, page_size=2)

    assert ids == sorted(ids)
    assert unrated > ids[-1]
    assert [[f.feedback_id for f in page] for page in pages] == [ids[:2], ids[2:4], [ids[4], unrated]]
    listed = [f for page in pages for f in page]
    assert [f.question for f in listed] == [*(f"question {i}" for i in range(5)), "no rating"]
    # Items in the order given, not sorted.
    assert listed[3].items == [FeedbackItem("b", 2, NOT_RELEVANT), FeedbackItem("a", 3, RELEVANT)]
    assert [f.answer_rating for f in listed] == [AnswerRating.GOOD] * 5 + [None]
    assert all(f.created_at.tzinfo is not None for f in listed)
    assert [f.feedback_id for f in (await store.list_feedback(namespace, after=ids[3])).feedback] == [
        ids[4],
        unrated,
    ]


async def test_a_bad_item_stores_nothing_of_its_submission(
    store: ChunkStore, with_documents: str, db: asyncpg.Connection
) -> None:
    namespace = with_documents
    bad_ones = {
        "items[2].chunk_index": submission("q", ("a", 0, RELEVANT), ("a", 1, RELEVANT), ("b", -1, RELEVANT)),
        "items[1].document_id": submission("q", ("a", 0, RELEVANT), (" ", 0, RELEVANT)),
        "items[1]": submission("q", ("a", 0, RELEVANT), ("a", 0, NOT_RELEVANT)),
        "question": submission(" \n", ("a", 0, RELEVANT)),
        "items (count)": FeedbackInput("q", [FeedbackItem("a", i, RELEVANT) for i in range(1001)]),
    }
    for field, bad in bad_ones.items():
        with pytest.raises(InvalidArgument) as refused:
            await store.submit_feedback(namespace, bad)
        assert refused.value.field == field

    # Past validation, a row the database refuses (the chunk_index check) rolls back the whole
    # submission, its feedback row included.
    with pytest.raises(asyncpg.CheckViolationError):
        await feedback.submit(
            db, namespace, submission("q", ("a", 0, RELEVANT), ("a", 1, RELEVANT), ("b", -1, RELEVANT))
        )

    assert await stored_rows(db, namespace) == (0, 0)
    assert (await store.list_feedback(namespace)).feedback == []


async def test_the_most_items_are_stored_and_one_more_is_refused(
    store: ChunkStore, with_documents: str, db: asyncpg.Connection
) -> None:
    most = [
        FeedbackItem(f"doc-{i}", i, RELEVANT if i % 2 else NOT_RELEVANT) for i in range(MAX_FEEDBACK_ITEMS)
    ]
    await store.submit_feedback(with_documents, FeedbackInput("q", most))
    with pytest.raises(InvalidArgument, match=r"items \(count\) must be 1\.\.1000, got 1001"):
        await store.submit_feedback(
            with_documents, FeedbackInput("q", [*most, FeedbackItem("x", 0, RELEVANT)])
        )
    with pytest.raises(InvalidArgument, match=r"items \(count\) must be 1\.\.1000, got 0"):
        await store.submit_feedback(with_documents, FeedbackInput("q", []))

    (listed,) = (await store.list_feedback(with_documents)).feedback
    assert listed.items == most
    assert await stored_rows(db, with_documents) == (1, MAX_FEEDBACK_ITEMS)


async def test_namespaces_are_kept_apart(store: ChunkStore, with_documents: str) -> None:
    other = f"{with_documents}-other"
    await store.upsert(other, [document("a")])
    mine = await store.submit_feedback(with_documents, submission("mine"))
    theirs = await store.submit_feedback(other, submission("theirs"))

    assert [f.feedback_id for f in (await store.list_feedback(with_documents)).feedback] == [mine]
    assert [f.feedback_id for f in (await store.list_feedback(other)).feedback] == [theirs]
    # Another namespace's id as the page start skips nothing of this one's and shows none of its.
    assert [f.question for f in (await store.list_feedback(other, after=mine)).feedback] == ["theirs"]


async def test_a_namespace_without_documents_is_refused_and_feedback_outlives_its_documents(
    store: ChunkStore, with_documents: str
) -> None:
    namespace = with_documents
    empty = f"{namespace}-empty"
    with pytest.raises(InvalidArgument, match="holds no documents") as refused:
        await store.submit_feedback(empty, submission())
    assert refused.value.field == "namespace"
    assert (await store.list_feedback(empty)).feedback == []

    kept = await store.submit_feedback(namespace, submission("q", ("a", 0, RELEVANT), ("gone", 3, RELEVANT)))
    await store.delete(namespace, ["a", "b"])

    (listed,) = (await store.list_feedback(namespace)).feedback
    assert (listed.feedback_id, [i.document_id for i in listed.items]) == (kept, ["a", "gone"])
    with pytest.raises(InvalidArgument, match="holds no documents"):
        await store.submit_feedback(namespace, submission())


async def test_a_page_ends_early_once_it_holds_its_bytes(store: ChunkStore, with_documents: str) -> None:
    # Each about a quarter of the bound: a page holds those that start within it.
    items = [FeedbackItem(f"{i:04d}" + "x" * 252, i, RELEVANT) for i in range(1000)]
    large = FeedbackInput("q", items)
    assert MAX_FEEDBACK_PAGE_BYTES // 4 < feedback.listed_bytes(large) < MAX_FEEDBACK_PAGE_BYTES // 3
    ids = [await store.submit_feedback(with_documents, large) for _ in range(5)]

    pages = await list_all(store, with_documents, page_size=10)

    assert [[f.feedback_id for f in page] for page in pages] == [ids[:4], ids[4:]]
    assert all(f.items == items for page in pages for f in page)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [({"page_size": 0}, "page_size"), ({"page_size": 1001}, "page_size"), ({"after": -1}, "after")],
)
async def test_bad_listings_are_refused(store: ChunkStore, arguments: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await store.list_feedback("ns", **arguments)
    assert refused.value.field == field


# Through the servicer


@pytest.fixture
async def retriever(store: ChunkStore) -> AsyncIterator[retriever_pb2_grpc.RetrieverServiceAsyncStub]:
    deferred: Deferred[ChunkStore] = Deferred("the store")
    deferred.resolve(store)
    async with serving(RetrieverServicer(deferred)) as stub:
        yield stub


def _item(
    document_id: str = "a",
    chunk_index: int = 0,
    label: retriever_pb2.FeedbackLabel.ValueType = retriever_pb2.FEEDBACK_LABEL_RELEVANT,
) -> retriever_pb2.FeedbackItem:
    return retriever_pb2.FeedbackItem(document_id=document_id, chunk_index=chunk_index, label=label)


async def test_submit_and_list_through_the_servicer(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub, with_documents: str
) -> None:
    namespace = with_documents
    items = [_item("b", 1, retriever_pb2.FEEDBACK_LABEL_NOT_RELEVANT), _item("a", 4)]
    stored = [
        await retriever.SubmitFeedback(
            retriever_pb2.SubmitFeedbackRequest(
                namespace=namespace,
                question=f"q{i}",
                items=items,
                answer_rating=retriever_pb2.ANSWER_RATING_BAD,
            )
        )
        for i in range(3)
    ]
    # UNSPECIFIED, set or not, is no rating.
    unrated = await retriever.SubmitFeedback(
        retriever_pb2.SubmitFeedbackRequest(
            namespace=namespace,
            question="q3",
            items=items[:1],
            answer_rating=retriever_pb2.ANSWER_RATING_UNSPECIFIED,
        )
    )

    listed: list[retriever_pb2.Feedback] = []
    token = ""
    while True:
        page = await retriever.ListFeedback(
            retriever_pb2.ListFeedbackRequest(namespace=namespace, page_size=3, page_token=token)
        )
        listed += page.feedback
        if not (token := page.next_page_token):
            break
        assert len(page.feedback) == 3

    assert [s.item_count for s in stored] == [2, 2, 2]
    assert unrated.item_count == 1
    assert [f.feedback_id for f in listed] == [*(s.feedback_id for s in stored), unrated.feedback_id]
    assert [f.question for f in listed] == ["q0", "q1", "q2", "q3"]
    assert list(listed[0].items) == items
    assert listed[0].answer_rating == retriever_pb2.ANSWER_RATING_BAD
    assert not listed[3].HasField("answer_rating")
    assert listed[0].HasField("created_at")


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _submit(**fields: Any) -> retriever_pb2.SubmitFeedbackRequest:
    fields.setdefault("question", "How long are backups kept?")
    fields.setdefault("items", [_item()])
    return retriever_pb2.SubmitFeedbackRequest(**fields)


@pytest.mark.parametrize(
    ("request_", "message", "field"),
    [
        (_submit(question=" "), "question must not be empty or blank", "question"),
        (_submit(question="q" * 4001), "question must be at most 4000 characters, got 4001", "question"),
        (_submit(question="a\x00b"), "question must not contain NUL characters", "question"),
        (_submit(items=[]), "items (count) must be 1..1000, got 0", "items (count)"),
        (
            _submit(items=[_item("a", i) for i in range(10_000)]),
            "items (count) must be 1..1000, got 10000",
            "items (count)",
        ),
        (
            _submit(items=[_item(), _item("a", 1, retriever_pb2.FEEDBACK_LABEL_UNSPECIFIED)]),
            "items[1].label must be one of FEEDBACK_LABEL_RELEVANT, FEEDBACK_LABEL_NOT_RELEVANT; got 0",
            "items[1].label",
        ),
        (
            _submit(items=[_item(label=retriever_pb2.FeedbackLabel.ValueType(7))]),
            "items[0].label must be one of FEEDBACK_LABEL_RELEVANT, FEEDBACK_LABEL_NOT_RELEVANT; got 7",
            "items[0].label",
        ),
        (
            _submit(items=[_item("a", -1)]),
            "items[0].chunk_index must be 0..2147483647, got -1",
            "items[0].chunk_index",
        ),
        (
            _submit(items=[_item("")]),
            "items[0].document_id must not be empty or blank",
            "items[0].document_id",
        ),
        (
            _submit(items=[_item("x" * 257)]),
            "items[0].document_id must be at most 256 characters, got 257",
            "items[0].document_id",
        ),
        (_submit(items=[_item(), _item()]), "chunk 0 of document 'a' is judged more than once", "items[1]"),
        (
            _submit(answer_rating=retriever_pb2.AnswerRating.ValueType(9)),
            "answer_rating must be one of ANSWER_RATING_UNSPECIFIED, ANSWER_RATING_GOOD, ANSWER_RATING_BAD",
            "answer_rating",
        ),
        (retriever_pb2.ListFeedbackRequest(page_size=-1), "page_size must be 1..1000, got -1", "page_size"),
        (
            retriever_pb2.ListFeedbackRequest(page_size=1001),
            "page_size must be 1..1000, got 1001",
            "page_size",
        ),
        *(
            (
                retriever_pb2.ListFeedbackRequest(page_token=token),
                "page_token is not one this service issued",
                "page_token",
            )
            for token in [
                "not base64!",
                "abcde",
                _token(b"0"),
                _token(b"-1"),
                _token(b"01"),
                _token(b"12a"),
                _token(b"9223372036854775808"),
                _token(b"\xff"),
            ]
        ),
    ],
)
async def test_bad_requests_are_invalid_arguments(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub,
    with_documents: str,
    request_: Any,
    message: str,
    field: str,
) -> None:
    request_.namespace = with_documents
    methods: dict[type, Callable[..., Awaitable[Any]]] = {
        retriever_pb2.SubmitFeedbackRequest: retriever.SubmitFeedback,
        retriever_pb2.ListFeedbackRequest: retriever.ListFeedback,
    }
    error = await refusal(methods[type(request_)](request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert message in (error.details() or "")
    assert violated_field(error) == field


async def test_a_namespace_without_documents_is_an_invalid_argument(
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub, namespace: str
) -> None:
    error = await refusal(
        retriever.SubmitFeedback(_submit(namespace=namespace)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert f"namespace {namespace!r} holds no documents" in (error.details() or "")
    assert violated_field(error) == "namespace"
