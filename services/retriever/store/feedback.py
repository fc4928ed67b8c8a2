"""Relevance feedback: judgments of search results, kept to train a reranker on, with the SQL they run.

A submission (a question, the chunks judged for it, maybe a rating of the
answer) is one row of rag_feedback and one row per judgment in
rag_feedback_items, written in one transaction: all of it or none. Feedback
is not tied to rag_documents: a judged document may be deleted later and its
judgments stay, for whoever reads them back to skip; deleting a namespace's
documents leaves its feedback alone.

Each function takes a connection and input the store has already validated.
submit() writes (the primary); list_feedback() only reads, so it may run on a
read replica.
"""

from __future__ import annotations

import asyncpg

from services.common.errors import InvalidArgument
from services.retriever.limits import MAX_FEEDBACK_PAGE_BYTES
from services.retriever.store.records import (
    AnswerRating,
    Feedback,
    FeedbackInput,
    FeedbackItem,
    FeedbackLabel,
    FeedbackPage,
)

# What a judgment costs in a listing beyond its document id's bytes: the
# protobuf tags, lengths and varints of an item, rounded up.
_ITEM_OVERHEAD_BYTES = 16

# Feedback judges what a search found, so a namespace without documents can
# have none: that is a namespace misspelt, or one the caller never ingested
# into. Checked in the insert itself, so it costs no statement of its own.
_INSERT_FEEDBACK_SQL = """
INSERT INTO rag_feedback (namespace, question, answer_rating, listed_bytes)
SELECT $1, $2, $3, $4
WHERE EXISTS (SELECT 1 FROM rag_documents WHERE namespace = $1)
RETURNING feedback_id
"""

_INSERT_ITEMS_SQL = """
INSERT INTO rag_feedback_items (namespace, feedback_id, item_index, document_id, chunk_index, label)
SELECT $1, $2, i.n - 1, i.document_id, i.chunk_index, i.label
FROM unnest($3::text[], $4::int[], $5::text[]) WITH ORDINALITY AS i (document_id, chunk_index, label, n)
"""

# A page's ids, and the bytes listed before each: a running sum, which
# PostgreSQL computes row by row as the primary key's index is read, so the
# LIMIT ($3, the page size plus one) stops the scan as usual. Only ids and
# sums: what the page may hold is decided before any text is read.
_PAGE_IDS_SQL = """
SELECT feedback_id, sum(listed_bytes) OVER (ORDER BY feedback_id) - listed_bytes AS bytes_before
FROM rag_feedback
WHERE namespace = $1 AND feedback_id > $2
ORDER BY feedback_id
LIMIT $3
"""

_PAGE_SQL = """
SELECT f.feedback_id, f.question, f.answer_rating, f.created_at,
       i.document_ids, i.chunk_indexes, i.labels
FROM rag_feedback f
CROSS JOIN LATERAL (
    SELECT array_agg(document_id ORDER BY item_index) AS document_ids,
           array_agg(chunk_index ORDER BY item_index) AS chunk_indexes,
           array_agg(label ORDER BY item_index) AS labels
    FROM rag_feedback_items
    WHERE namespace = f.namespace AND feedback_id = f.feedback_id
) i
WHERE f.namespace = $1 AND f.feedback_id = ANY($2::bigint[])
ORDER BY f.feedback_id
"""


def listed_bytes(feedback: FeedbackInput) -> int:
    """About what the feedback weighs in a listing: its question, ids and the items' framing."""
    ids = sum(len(item.document_id.encode()) for item in feedback.items)
    return len(feedback.question.encode()) + ids + _ITEM_OVERHEAD_BYTES * len(feedback.items)


async def submit(conn: asyncpg.Connection, namespace: str, feedback: FeedbackInput) -> int:
    """Stores the submission whole and returns its feedback id; InvalidArgument for a namespace
    that holds no documents."""
    rating = None if feedback.answer_rating is None else feedback.answer_rating.value
    async with conn.transaction():
        feedback_id = await conn.fetchval(
            _INSERT_FEEDBACK_SQL, namespace, feedback.question, rating, listed_bytes(feedback)
        )
        if feedback_id is None:
            raise InvalidArgument(
                f"namespace {namespace!r} holds no documents: feedback judges search results, so it goes "
                "to a namespace that has some (ingest first, or check the name)",
                field="namespace",
            )
        await conn.execute(
            _INSERT_ITEMS_SQL,
            namespace,
            feedback_id,
            [item.document_id for item in feedback.items],
            [item.chunk_index for item in feedback.items],
            [item.label.value for item in feedback.items],
        )
    return int(feedback_id)


async def list_feedback(conn: asyncpg.Connection, namespace: str, page_size: int, after: int) -> FeedbackPage:
    """Up to page_size feedback with ids above `after`, by id; fewer once MAX_FEEDBACK_PAGE_BYTES are
    listed (always at least one, however large, so every page moves on)."""
    candidates = await conn.fetch(_PAGE_IDS_SQL, namespace, after, page_size + 1)
    page_ids = [
        row["feedback_id"]
        for i, row in enumerate(candidates[:page_size])
        if i == 0 or row["bytes_before"] < MAX_FEEDBACK_PAGE_BYTES
    ]
    if not page_ids:
        return FeedbackPage([], None)
    rows = await conn.fetch(_PAGE_SQL, namespace, page_ids)
    feedback = [_feedback(row) for row in rows]
    more = len(candidates) > len(page_ids)
    return FeedbackPage(feedback, feedback[-1].feedback_id if more else None)


def _feedback(row: asyncpg.Record) -> Feedback:
    items = [
        FeedbackItem(document_id, chunk_index, FeedbackLabel(label))
        for document_id, chunk_index, label in zip(
            row["document_ids"], row["chunk_indexes"], row["labels"], strict=True
        )
    ]
    rating = row["answer_rating"]
    return Feedback(
        feedback_id=row["feedback_id"],
        question=row["question"],
        items=items,
        answer_rating=None if rating is None else AnswerRating(rating),
        created_at=row["created_at"],
    )
