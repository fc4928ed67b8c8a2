from __future__ import annotations

import asyncio
import logging

import grpc
from opentelemetry.sdk.trace import TracerProvider

from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from services.common.deferred import Deferred
from services.common.internal_auth import InternalAuthInterceptor, TokenVerifier
from services.common.registry import EMBEDDER
from services.common.server import ServiceBinding, serve
from services.embedder.batcher import BatchLimits, DynamicBatcher
from services.embedder.cache import EmbeddingCache
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel
from services.embedder.servicer import Embedder, EmbedderServicer

log = logging.getLogger(__name__)

SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name


def batch_limits(settings: EmbedderSettings) -> BatchLimits:
    return BatchLimits(
        max_texts=settings.inference_batch_size,
        max_tokens=settings.max_batch_tokens,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queued_texts=settings.max_queued_texts,
    )


async def run(settings: EmbedderSettings, tracer_provider: TracerProvider) -> None:
    # First: without its key the embedder would serve anyone; it does not start.
    internal_auth = InternalAuthInterceptor(TokenVerifier(settings.internal_auth_key(), EMBEDDER.name))
    embedder: Deferred[Embedder] = Deferred("the embedding model")
    servicer = EmbedderServicer(embedder, settings)

    def register(server: grpc.aio.Server) -> None:
        embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(servicer, server)

    async def start() -> None:
        model = await asyncio.to_thread(EmbeddingModel.load, settings)
        log.info(
            "loaded %s on %s (dimension %d, max %d tokens)",
            model.name,
            model.encoder.backend,
            model.dimension,
            model.max_tokens,
        )
        batcher = DynamicBatcher(model.encoder, model.dimension, batch_limits(settings))
        batcher.start()
        embedder.resolve(Embedder(model, batcher, EmbeddingCache(model.name, settings.cache_size)))

    async def stop() -> None:
        if embedder.ready:
            await embedder.value.batcher.close()

    binding = ServiceBinding([SERVICE_NAME], register, start, stop, interceptors=[internal_auth])
    await serve(settings, binding, tracer_provider)
