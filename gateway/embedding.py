"""Embedding many texts through one EmbedStream call, a bounded window of batches at a time.

One bidirectional stream per ingest replaces one Embed call per batch: the
embedder works on several batches at once, and the caller handles each batch's
embeddings as soon as they arrive. The writer waits for a free slot in the
window before each batch it sends, and the reader frees one per answer, so no
more than `window` batches are ever sent and unanswered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc

from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from services.common.errors import Unavailable

StreamCall = grpc.aio.StreamStreamCall[embedder_pb2.EmbedStreamRequest, embedder_pb2.EmbedStreamResponse]

# What grpc-python's aio client reports when it has lost the server's status; see _real_error.
_LOST_STATUS_DETAILS = "Internal error from Core"


async def embed_stream(
    embedder: embedder_pb2_grpc.EmbedderServiceAsyncStub,
    batches: Sequence[Sequence[str]],
    *,
    input_type: embedder_pb2.InputType.ValueType,
    truncate: bool,
    window: int,
    rpc_timeout: float,
) -> AsyncGenerator[embedder_pb2.EmbedResponse, None]:
    """Yields each batch's embeddings, in batch order.

    rpc_timeout (seconds) bounds the whole call. The embedder's own failures
    surface as grpc.aio.AioRpcError (map them with gateway.upstream.calling);
    answers that do not match the batches sent raise Unavailable. Closing the
    generator early (use contextlib.aclosing) cancels the call, so nothing is
    left running.
    """
    if not batches:
        return
    expires = time.monotonic() + rpc_timeout
    window_slots = _Window(window)

    def request(index: int) -> embedder_pb2.EmbedStreamRequest:
        return embedder_pb2.EmbedStreamRequest(
            sequence=_sequence(index),
            batch=embedder_pb2.EmbedRequest(texts=batches[index], input_type=input_type, truncate=truncate),
        )

    async def requests() -> AsyncIterator[embedder_pb2.EmbedStreamRequest]:
        for index in range(len(batches)):
            if not await window_slots.wait_for_slot():
                return
            yield request(index)

    # gRPC's own writer task sends what requests() yields. (Not call.write():
    # through client interceptors, a call the server ends early would then
    # leave a gRPC task pending for ever.)
    call: StreamCall = embedder.EmbedStream(requests(), timeout=rpc_timeout)
    try:
        for index, texts in enumerate(batches):
            try:
                response = await _read(call)
            except grpc.aio.AioRpcError as error:
                real = await _real_error(error, embedder, request(index), expires - time.monotonic())
                if real is error:
                    raise
                raise real from error
            batch = _checked(response, index, len(batches), len(texts))
            window_slots.answered()
            yield batch
        # Read on to the end, so the call finishes with the embedder's own
        # status instead of being cancelled under it.
        if await _read(call) is not None:
            raise Unavailable(f"embedder: the embedding stream answered more than {len(batches)} batches")
    finally:
        call.cancel()  # a no-op once the call has finished
        # If the call ended first (the embedder failed), gRPC's writer task may
        # still wait in requests() for a slot; let it go, or it waits for ever.
        window_slots.close()


class _Window:
    """Slots for the batches sent and not yet answered."""

    def __init__(self, size: int) -> None:
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    async def wait_for_slot(self) -> bool:
        """Waits for a free slot; False once the stream is over and nothing more may be sent."""
        await self._slots.acquire()
        return not self._closed

    def answered(self) -> None:
        self._slots.release()

    def close(self) -> None:
        self._closed = True
        self._slots.release()


def _sequence(index: int) -> int:
    # From 1, not 0: proto3 reads an unset sequence as 0, so an answer that
    # forgot to echo it would pass for the first batch's.
    return index + 1


async def _read(call: StreamCall) -> embedder_pb2.EmbedStreamResponse | None:
    """The next answer; None at the end of the stream."""
    response = await call.read()
    if response is grpc.aio.EOF:
        return None
    assert isinstance(response, embedder_pb2.EmbedStreamResponse)
    return response


async def _real_error(
    error: grpc.aio.AioRpcError,
    embedder: embedder_pb2_grpc.EmbedderServiceAsyncStub,
    due: embedder_pb2.EmbedStreamRequest,
    time_left: float,
) -> Exception:
    """The error to raise for a stream that failed while batch `due` was the next to be answered.

    Usually the stream's own. But when the embedder ends the stream (say, it
    rejects a batch) while gRPC is still sending it batches, grpc-python's aio
    client may report INTERNAL "Internal error from Core" in place of the
    embedder's status (grpc/grpc#36066). Then ask for the due batch alone: the
    embedder stopped the stream at it, so it answers the same way again, say
    INVALID_ARGUMENT naming the text at fault.
    """
    lost = error.code() == grpc.StatusCode.INTERNAL and error.details() == _LOST_STATUS_DETAILS
    if not lost or time_left <= 0:
        return error
    try:
        await embedder.Embed(due.batch, timeout=time_left)
    except grpc.aio.AioRpcError as real:
        return real
    return Unavailable(f"embedder: the embedding stream broke off at batch {due.sequence}")


def _checked(
    response: embedder_pb2.EmbedStreamResponse | None, index: int, batches: int, texts: int
) -> embedder_pb2.EmbedResponse:
    """The batch's embeddings, once the answer is known to be the one to batch `index`, and whole."""
    if response is None:
        raise Unavailable(f"embedder: the embedding stream ended after {index} of {batches} batches")
    if response.sequence != _sequence(index):
        raise Unavailable(
            f"embedder: the embedding stream answered batch {response.sequence} "
            f"where batch {_sequence(index)} was due; answers must come in the order sent"
        )
    if len(response.batch.embeddings) != texts:
        raise Unavailable(
            f"embedder: batch {_sequence(index)} of the embedding stream came back with "
            f"{len(response.batch.embeddings)} embeddings for {texts} texts"
        )
    return response.batch
