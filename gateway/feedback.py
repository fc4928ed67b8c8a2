"""Relevance feedback: SubmitFeedback and ListFeedback, passed on to the retriever, which stores it.

The servicer checks the question as it checks every question the gateway
takes; the retriever owns the rest and checks it (the judgments, the namespace
holding documents, paging), and its refusals reach the caller under the same
field names (gateway/error_details.py). Every call carries the call's tenant, which
the channel signs into the call's token (services/common/tenant.py), as every
retriever call does.
"""

from __future__ import annotations

from gateway import error_details
from gateway.concurrency import Deadline
from gateway.upstream import Upstreams, calling
from rag.gateway.v1 import gateway_pb2
from rag.retriever.v1 import retriever_pb2
from services.common.tenant import Tenant


class FeedbackRelay:
    def __init__(self, upstreams: Upstreams) -> None:
        self._up = upstreams

    async def submit(
        self, request: gateway_pb2.SubmitFeedbackRequest, tenant: Tenant, deadline: Deadline
    ) -> gateway_pb2.SubmitFeedbackResponse:
        with calling("retriever", error_details.SUBMIT_FEEDBACK):
            stored = await self._up.retriever.SubmitFeedback(
                retriever_pb2.SubmitFeedbackRequest(
                    namespace=tenant.namespace,
                    question=request.question,
                    items=request.items,
                    answer_rating=request.answer_rating if request.HasField("answer_rating") else None,
                ),
                timeout=deadline.remaining(),
                metadata=tenant.metadata(),
            )
        return gateway_pb2.SubmitFeedbackResponse(
            feedback_id=stored.feedback_id, item_count=stored.item_count
        )

    async def list_feedback(
        self, request: gateway_pb2.ListFeedbackRequest, tenant: Tenant, deadline: Deadline
    ) -> gateway_pb2.ListFeedbackResponse:
        with calling("retriever", error_details.LIST_FEEDBACK):
            listed = await self._up.retriever.ListFeedback(
                retriever_pb2.ListFeedbackRequest(
                    namespace=tenant.namespace, page_size=request.page_size, page_token=request.page_token
                ),
                timeout=deadline.remaining(),
                metadata=tenant.metadata(),
            )
        return gateway_pb2.ListFeedbackResponse(
            feedback=listed.feedback, next_page_token=listed.next_page_token
        )
