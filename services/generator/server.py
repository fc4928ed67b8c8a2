from __future__ import annotations

import grpc
from opentelemetry.sdk.trace import TracerProvider

from rag.generator.v1 import generator_pb2, generator_pb2_grpc
from services.common.internal_auth import InternalAuthInterceptor, TokenVerifier
from services.common.registry import GENERATOR
from services.common.server import ServiceBinding, serve
from services.generator.backends.base import AnswerBackend
from services.generator.backends.extractive import ExtractiveBackend
from services.generator.config import GeneratorSettings
from services.generator.context import ContextAssembler, TokenBudget
from services.generator.servicer import GeneratorServicer
from services.generator.tokens import HuggingFaceTokenCounter, default_tokenizer_path

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].full_name


def build_backend(settings: GeneratorSettings) -> AnswerBackend:
    if settings.backend == "extractive":
        return ExtractiveBackend(
            min_overlap=settings.extractive_min_overlap, max_unmentioned=settings.extractive_max_unmentioned
        )
    import openai

    from services.generator.backends.openai_compat import OpenAICompatibleBackend

    client = openai.AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key.get_secret_value(),
        timeout=settings.openai_timeout_s,
        max_retries=settings.openai_max_retries,
    )
    return OpenAICompatibleBackend(
        client, settings.openai_model, default_max_tokens=settings.default_max_tokens
    )


def build_assembler(settings: GeneratorSettings) -> ContextAssembler:
    """Dedup for every backend; a token budget only for an LLM, which has a context window."""
    budget = None
    if settings.backend == "openai":
        counter = HuggingFaceTokenCounter.from_path(
            settings.tokenizer_path or default_tokenizer_path(), margin=settings.token_margin
        )
        budget = TokenBudget(counter, settings.context_window_tokens, settings.history_share)
    return ContextAssembler(
        budget=budget,
        dedup_threshold=settings.dedup_threshold,
        history_max_turns=settings.history_max_turns,
    )


async def run(settings: GeneratorSettings, tracer_provider: TracerProvider) -> None:
    # First: without its key the generator would be anyone's free way to the LLM; it does not start.
    internal_auth = InternalAuthInterceptor(TokenVerifier(settings.internal_auth_key(), GENERATOR.name))
    # Nothing slow to load: the token counter reads one local file before the server
    # listens, so a bad one stops start-up at once. An LLM server that is down is
    # reported per call as UNAVAILABLE, and the generator stays up for it.
    servicer = GeneratorServicer(
        build_backend(settings), build_assembler(settings), settings.default_max_tokens
    )

    def register(server: grpc.aio.Server) -> None:
        generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server)

    await serve(
        settings, ServiceBinding([SERVICE_NAME], register, interceptors=[internal_auth]), tracer_provider
    )
