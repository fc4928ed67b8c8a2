"""rag_cli.bulk against a gateway servicer of the test's own: how many calls it keeps in flight, when it
reads each batch, the order of what it returns, and how it stops at a failure.

The servicer holds each IngestDocuments call until `concurrency` calls are in
flight (or no more batches can come), so a client that sent one call at a time
would never be answered: the test's timeout would fail it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from rag_cli.bulk import MAX_CONCURRENCY, send_batches
from rag_client import AsyncRagClient, InvalidArgument

TIMEOUT_S = 30
Context = grpc.aio.ServicerContext[object, object]


class Waves(gateway_pb2_grpc.GatewayServiceServicer):
    """Answers IngestDocuments a wave at a time: each call waits until `width` calls are in flight or
    `total` have arrived. A batch whose first id is `refused` is refused at once."""

    def __init__(self, width: int, total: int, taken: list[int], refused: str | None = None) -> None:
        self.width, self.total, self.refused = width, total, refused
        self.taken = taken  # the batches the client has read so far, kept up by _batches()
        self.arrived: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.read_when_full: list[int] = []  # batches read each time a wave filled
        self._wave = asyncio.Event()

    async def IngestDocuments(
        self, request: gateway_pb2.IngestDocumentsRequest, context: Context
    ) -> gateway_pb2.IngestDocumentsResponse:
        ids = [document.id for document in request.documents]
        self.arrived.append(ids)
        if ids[0] == self.refused:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"documents[0].id {ids[0]!r} is refused")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        wave = self._wave
        if self.in_flight == self.width or len(self.arrived) == self.total:
            self.read_when_full.append(len(self.taken))
            self._wave = asyncio.Event()
            wave.set()
        try:
            await wave.wait()
        finally:
            self.in_flight -= 1
        results = [
            gateway_pb2.DocumentResult(document_id=i, status=retriever_pb2.UPSERT_STATUS_CREATED) for i in ids
        ]
        return gateway_pb2.IngestDocumentsResponse(results=results)

    async def Search(
        self, request: gateway_pb2.SearchRequest, context: Context
    ) -> gateway_pb2.SearchResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")

    async def Ask(self, request: gateway_pb2.AskRequest, context: Context) -> gateway_pb2.AskResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")

    async def AskStream(
        self, request: gateway_pb2.AskStreamRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.AskStreamResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")
        yield gateway_pb2.AskStreamResponse()  # never reached: makes this a stream handler

    async def DeleteDocuments(
        self, request: gateway_pb2.DeleteDocumentsRequest, context: Context
    ) -> gateway_pb2.DeleteDocumentsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")

    async def ListDocuments(
        self, request: gateway_pb2.ListDocumentsRequest, context: Context
    ) -> gateway_pb2.ListDocumentsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")

    async def SubmitFeedback(
        self, request: gateway_pb2.SubmitFeedbackRequest, context: Context
    ) -> gateway_pb2.SubmitFeedbackResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")

    async def ListFeedback(
        self, request: gateway_pb2.ListFeedbackRequest, context: Context
    ) -> gateway_pb2.ListFeedbackResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")


@contextlib.asynccontextmanager
async def _serving(servicer: Waves) -> AsyncIterator[str]:
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def _batches(count: int, taken: list[int]) -> Iterator[list[gateway_pb2.Document]]:
    """`count` batches of index+1 documents, ids "b<index>-<n>"; `taken` grows as each is read."""
    for index in range(count):
        taken.append(index)
        yield [gateway_pb2.Document(id=f"b{index}-{n}", text="x") for n in range(index + 1)]


@pytest.mark.parametrize("concurrency", [1, 3, MAX_CONCURRENCY])
async def test_calls_in_flight_are_bounded_batches_read_lazily_and_results_in_order(concurrency: int) -> None:
    total, taken = 10, list[int]()
    servicer = Waves(concurrency, total, taken)
    sent: list[int] = []
    async with _serving(servicer) as target, AsyncRagClient(target, timeout_s=TIMEOUT_S) as client:
        responses = await asyncio.wait_for(
            send_batches(client, "ns", _batches(total, taken), concurrency, sent.append), TIMEOUT_S
        )

    assert servicer.most_in_flight == min(concurrency, total)
    # When the first wave filled, only its batches had been read.
    assert servicer.read_when_full[0] == concurrency
    assert [[r.document_id for r in response.results] for response in responses] == [
        [f"b{index}-{n}" for n in range(index + 1)] for index in range(total)
    ]
    assert sorted(sent) == list(range(1, total + 1))  # each batch's size, once it was answered


async def test_the_first_failure_stops_the_run_and_is_raised_as_itself() -> None:
    total, concurrency, taken = 10, 3, list[int]()
    servicer = Waves(concurrency, total, taken, refused="b4-0")
    async with _serving(servicer) as target, AsyncRagClient(target, timeout_s=TIMEOUT_S) as client:
        with pytest.raises(InvalidArgument, match="'b4-0' is refused"):
            await asyncio.wait_for(send_batches(client, "ns", _batches(total, taken), concurrency), TIMEOUT_S)

    # The second wave (3, 4, 5) never filled: 3 and 5 were cancelled, and nothing after was sent.
    assert sorted(ids[0] for ids in servicer.arrived) == [f"b{i}-0" for i in range(6)]
    assert len(taken) == 6


async def test_concurrency_is_checked() -> None:
    async with AsyncRagClient("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match=f"1..{MAX_CONCURRENCY}, got 0"):
            await send_batches(client, "ns", [], 0)
