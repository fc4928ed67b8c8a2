"""Bulk ingestion: batches of documents sent as IngestDocuments calls, a few at once.

The gateway embeds the chunks of one IngestDocuments call through one
EmbedStream, on one embedder replica. Calls side by side are what spread a bulk
load over every replica: the gateway balances its calls to the embedder over
the replicas (round_robin), so N calls in flight can keep up to N replicas busy.

The number in flight is bounded, so that a bulk load cannot starve queries. The
gateway works on GATEWAY_MAX_IN_FLIGHT calls at once (20 by default) and, with
authentication on, on at most GATEWAY_MAX_IN_FLIGHT_PER_KEY of one key's (16 by
default), refusing the excess with RESOURCE_EXHAUSTED (gateway/admission.py).
MAX_CONCURRENCY is half that per-key default: at the defaults an ingest takes at
most half of its key's slots and 8 of the gateway's 20, and queries, the same
key's included, still get in beside it.

A batch's documents are made (its files read) only when a call is free to send
them, so no more than `concurrency` batches are held at once. Results come back
in batch order whatever order the calls finish in, so what is reported does not
depend on the concurrency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence

from gateway.config import GatewaySettings
from rag.gateway.v1 import gateway_pb2
from rag_client import AsyncRagClient

DEFAULT_PER_KEY_LIMIT: int = GatewaySettings.model_fields["max_in_flight_per_key"].default
MAX_CONCURRENCY = DEFAULT_PER_KEY_LIMIT // 2
# Two calls keep two embedder replicas busy, or one replica busy while the other call is being
# chunked and stored, at 2 of the gateway's 20 slots.
DEFAULT_CONCURRENCY = 2


async def send_batches(
    client: AsyncRagClient,
    namespace: str,
    batches: Iterable[Sequence[gateway_pb2.Document]],
    concurrency: int,
    on_sent: Callable[[int], object] = lambda documents: None,
) -> list[gateway_pb2.IngestDocumentsResponse]:
    """Each batch's response, in batch order; up to `concurrency` calls in flight.

    `batches` is read lazily, one batch each time a call is free. on_sent gets
    the number of documents of each batch as its call completes. The first
    failed call (a RagError) ends the run: the calls still in flight are
    cancelled, no more are sent, and the error is raised as itself.
    """
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency}")
    responses: dict[int, gateway_pb2.IngestDocumentsResponse] = {}
    # One iterator shared by every sender: each takes the next batch when its call is done.
    # Safe without a lock: nothing awaits between taking a batch and sending it.
    numbered = enumerate(batches)

    async def sender() -> None:
        for index, documents in numbered:
            responses[index] = await client.ingest_documents(namespace, documents)
            on_sent(len(documents))

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(sender())
    except ExceptionGroup as failed:
        # The first failure is the cause; the others, if any, mostly its echoes. Raised as
        # itself, its own cause kept.
        first = failed.exceptions[0]
        raise first from first.__cause__
    return [responses[index] for index in range(len(responses))]
