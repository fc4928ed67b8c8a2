from __future__ import annotations

import asyncio
import logging

import grpc
from opentelemetry.sdk.trace import TracerProvider

from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from services.common.deferred import Deferred
from services.common.server import ServiceBinding, serve
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel, default_model_path
from services.embedder.servicer import EmbedderServicer

log = logging.getLogger(__name__)

SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name


async def run(settings: EmbedderSettings, tracer_provider: TracerProvider) -> None:
    model: Deferred[EmbeddingModel] = Deferred("the embedding model")
    servicer = EmbedderServicer(model, settings)

    def register(server: grpc.aio.Server) -> None:
        embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(servicer, server)

    async def start() -> None:
        name_or_path = settings.model or default_model_path()
        loaded = await asyncio.to_thread(
            EmbeddingModel.load,
            name_or_path,
            device=settings.device,
            inference_batch_size=settings.inference_batch_size,
            query_prefix=settings.query_prefix,
            document_prefix=settings.document_prefix,
        )
        log.info("loaded %s (dimension %d, max %d tokens)", name_or_path, loaded.dimension, loaded.max_tokens)
        model.resolve(loaded)

    async def stop() -> None:
        if model.ready:
            model.value.close()

    await serve(settings, ServiceBinding([SERVICE_NAME], register, start, stop), tracer_provider)
