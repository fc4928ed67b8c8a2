from __future__ import annotations

import grpc
from opentelemetry.sdk.trace import TracerProvider

from gateway.access import AccessInterceptor
from gateway.admission import Admission
from gateway.answer_cache import AnswerCache
from gateway.auth import Authorizer
from gateway.config import GatewaySettings
from gateway.extraction import FileLimits, FileReader
from gateway.feedback import FeedbackRelay
from gateway.ingest import IngestPipeline
from gateway.query import QueryPipeline
from gateway.servicer import GatewayServicer
from gateway.upstream import Upstreams
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.internal_auth import TokenSigner
from services.common.server import ServiceBinding, serve

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]


async def run(settings: GatewaySettings, tracer_provider: TracerProvider) -> None:
    # First: a keys file or an inner-hop key that cannot be read stops the start-up.
    authorizer = Authorizer.from_file(settings.api_keys_file, settings.host)
    signer = TokenSigner(settings.internal_auth_key())
    # Channels connect lazily, so the gateway is ready as soon as it listens;
    # a dependency that is down surfaces per call as UNAVAILABLE.
    upstreams = Upstreams.connect(
        embedder_target=settings.embedder_target,
        retriever_target=settings.retriever_target,
        generator_target=settings.generator_target,
        max_message_bytes=settings.upstream_max_message_bytes,
        signer=signer,
        policy=settings.channel_policy,
    )
    answers = AnswerCache(
        settings.answer_cache_size, settings.answer_cache_ttl_s, settings.semantic_cache_min_similarity
    )
    servicer = GatewayServicer(
        QueryPipeline(upstreams, answers),
        IngestPipeline(upstreams, settings.embed_batch_size, settings.embed_stream_window),
        settings,
        FileReader(FileLimits.from_settings(settings)),
        FeedbackRelay(upstreams),
    )
    admission = Admission(settings.max_in_flight, settings.in_flight_per_key)
    access = AccessInterceptor(SERVICE, authorizer, admission)

    def register(server: grpc.aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)

    binding = ServiceBinding(
        [SERVICE.full_name],
        register,
        stop=upstreams.close,
        interceptors=[access],
        # While the keys file cannot be read the gateway serves no call, and says so.
        watch=authorizer.watch_keys_file,
    )
    await serve(settings, binding, tracer_provider)
