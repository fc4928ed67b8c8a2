from __future__ import annotations

import grpc
from opentelemetry.sdk.trace import TracerProvider

from gateway.access import AccessInterceptor
from gateway.admission import Admission
from gateway.answer_cache import AnswerCache
from gateway.auth import Authorizer
from gateway.config import GatewaySettings
from gateway.ingest import IngestPipeline
from gateway.query import QueryPipeline
from gateway.servicer import GatewayServicer
from gateway.upstream import Upstreams
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.server import ServiceBinding, serve

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]


async def run(settings: GatewaySettings, tracer_provider: TracerProvider) -> None:
    # First: a keys file that cannot be read stops the start-up.
    authorizer = Authorizer.from_file(settings.api_keys_file)
    # Channels connect lazily, so the gateway is ready as soon as it listens;
    # a dependency that is down surfaces per call as UNAVAILABLE.
    upstreams = Upstreams.connect(
        embedder_target=settings.embedder_target,
        retriever_target=settings.retriever_target,
        generator_target=settings.generator_target,
        tracer_provider=tracer_provider,
        max_message_bytes=settings.max_message_bytes,
        policy=settings.channel_policy,
    )
    answers = AnswerCache(settings.answer_cache_size, settings.answer_cache_ttl_s)
    servicer = GatewayServicer(
        QueryPipeline(upstreams, answers),
        IngestPipeline(upstreams, settings.embed_batch_size, settings.embed_stream_window),
        settings,
    )
    access = AccessInterceptor(SERVICE, authorizer, Admission(settings.max_in_flight))

    def register(server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)

    binding = ServiceBinding([SERVICE.full_name], register, stop=upstreams.close, interceptors=[access])
    await serve(settings, binding, tracer_provider)
