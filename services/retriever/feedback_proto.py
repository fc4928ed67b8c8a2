"""Relevance feedback between its protos and the store's records, and the page tokens of its listing.

What only a call has is checked here: the number of judgments, the enums
(proto3 enums are open, so an unknown number arrives as itself) and the page
token. What a submission must satisfy whoever stores it (the question, each
document id and chunk index), the store checks.
"""

from __future__ import annotations

import base64
import binascii
import re

from rag.retriever.v1 import retriever_pb2
from services.common.errors import InvalidArgument
from services.common.validation import require_range
from services.retriever.limits import MAX_FEEDBACK_ITEMS
from services.retriever.store.records import (
    AnswerRating,
    Feedback,
    FeedbackInput,
    FeedbackItem,
    FeedbackLabel,
)

_LABELS = {
    retriever_pb2.FEEDBACK_LABEL_RELEVANT: FeedbackLabel.RELEVANT,
    retriever_pb2.FEEDBACK_LABEL_NOT_RELEVANT: FeedbackLabel.NOT_RELEVANT,
}
_LABEL_PROTOS = {label: proto for proto, label in _LABELS.items()}

# UNSPECIFIED is no rating, as leaving the field unset is.
_RATINGS = {
    retriever_pb2.ANSWER_RATING_UNSPECIFIED: None,
    retriever_pb2.ANSWER_RATING_GOOD: AnswerRating.GOOD,
    retriever_pb2.ANSWER_RATING_BAD: AnswerRating.BAD,
}
_RATING_PROTOS = {rating: proto for proto, rating in _RATINGS.items() if rating is not None}

# A page token is the last listed feedback id, in decimal, in unpadded URL-safe
# base64: opaque to callers, as ListDocuments' tokens are.
_PAGE_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
_PAGE_TOKEN_ID_PATTERN = re.compile(r"[1-9][0-9]{0,18}")
_MAX_FEEDBACK_ID = 2**63 - 1
_BAD_PAGE_TOKEN = (
    "page_token is not one this service issued; pass the previous page's next_page_token, "
    "or leave it empty for the first page"
)


def submission(request: retriever_pb2.SubmitFeedbackRequest) -> FeedbackInput:
    """The request's question, judgments and rating; InvalidArgument naming the field at fault."""
    require_range(len(request.items), "items (count)", 1, MAX_FEEDBACK_ITEMS)
    items = [
        FeedbackItem(item.document_id, item.chunk_index, _label(item.label, f"items[{i}].label"))
        for i, item in enumerate(request.items)
    ]
    rating = _rating(request.answer_rating) if request.HasField("answer_rating") else None
    return FeedbackInput(request.question, items, rating)


def feedback_proto(feedback: Feedback) -> retriever_pb2.Feedback:
    proto = retriever_pb2.Feedback(
        feedback_id=feedback.feedback_id,
        question=feedback.question,
        items=[
            retriever_pb2.FeedbackItem(
                document_id=item.document_id,
                chunk_index=item.chunk_index,
                label=_LABEL_PROTOS[item.label],
            )
            for item in feedback.items
        ],
    )
    if feedback.answer_rating is not None:
        proto.answer_rating = _RATING_PROTOS[feedback.answer_rating]
    proto.created_at.FromDatetime(feedback.created_at)
    return proto


def page_token(feedback_id: int) -> str:
    return base64.urlsafe_b64encode(str(feedback_id).encode()).decode().rstrip("=")


def page_token_id(token: str) -> int:
    """The feedback id a page token resumes after; 0 (the start) for no token."""
    if not token:
        return 0
    if not _PAGE_TOKEN_PATTERN.fullmatch(token):
        raise InvalidArgument(_BAD_PAGE_TOKEN, field="page_token")
    try:
        decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(_BAD_PAGE_TOKEN, field="page_token") from None
    # Only a feedback id, a bigint above 0, can have been the last of a page.
    if not _PAGE_TOKEN_ID_PATTERN.fullmatch(decoded) or int(decoded) > _MAX_FEEDBACK_ID:
        raise InvalidArgument(_BAD_PAGE_TOKEN, field="page_token")
    return int(decoded)


def _label(value: retriever_pb2.FeedbackLabel.ValueType, field: str) -> FeedbackLabel:
    if value not in _LABELS:
        accepted = ", ".join(retriever_pb2.FeedbackLabel.Name(label) for label in _LABELS)
        raise InvalidArgument(f"{field} must be one of {accepted}; got {value}", field=field)
    return _LABELS[value]


def _rating(value: retriever_pb2.AnswerRating.ValueType) -> AnswerRating | None:
    if value not in _RATINGS:
        accepted = ", ".join(retriever_pb2.AnswerRating.Name(rating) for rating in _RATINGS)
        raise InvalidArgument(
            f"answer_rating must be one of {accepted} (or unset); got {value}", field="answer_rating"
        )
    return _RATINGS[value]
