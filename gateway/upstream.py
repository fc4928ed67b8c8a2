"""Channels to the embedder, retriever and generator, and how their failures surface.

Retries live in the channel's service config: only UNAVAILABLE is retried, with
backoff, so a call to a service that is down fails fast instead of hanging.
`round_robin` spreads calls over every address of a dns:/// target.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider
from rag.embedder.v1 import embedder_pb2_grpc
from rag.generator.v1 import generator_pb2_grpc
from rag.retriever.v1 import retriever_pb2_grpc

from services.common import errors

_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)

# Statuses whose meaning holds across the hop; anything else from a dependency
# is the gateway's failure to serve, reported as UNAVAILABLE or INTERNAL.
_PASSED_THROUGH: dict[grpc.StatusCode, type[errors.ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
}


def open_channel(target: str, tracer_provider: TracerProvider, max_message_bytes: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        interceptors=aio_client_interceptors(tracer_provider=tracer_provider),  # type: ignore[no-untyped-call]
    )


@contextmanager
def calling(service: str) -> Iterator[None]:
    """Re-raises a dependency's failure as the gateway's own, naming the dependency."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        error_type = _PASSED_THROUGH.get(error.code())
        if error_type is None:
            raise errors.ServiceError(f"{service} failed: {error.code().name}") from error
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            raise errors.Unavailable(f"{service} is unavailable: {error.details()}") from error
        raise error_type(f"{service}: {error.details()}") from error


@dataclass
class Upstreams:
    embedder: embedder_pb2_grpc.EmbedderServiceAsyncStub
    retriever: retriever_pb2_grpc.RetrieverServiceAsyncStub
    generator: generator_pb2_grpc.GeneratorServiceAsyncStub
    channels: list[grpc.aio.Channel]

    @classmethod
    def connect(
        cls,
        *,
        embedder_target: str,
        retriever_target: str,
        generator_target: str,
        tracer_provider: TracerProvider,
        max_message_bytes: int,
    ) -> Upstreams:
        embedder, retriever, generator = (
            open_channel(target, tracer_provider, max_message_bytes)
            for target in (embedder_target, retriever_target, generator_target)
        )
        return cls(
            embedder=embedder_pb2_grpc.EmbedderServiceStub(embedder),
            retriever=retriever_pb2_grpc.RetrieverServiceStub(retriever),
            generator=generator_pb2_grpc.GeneratorServiceStub(generator),
            channels=[embedder, retriever, generator],
        )

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
