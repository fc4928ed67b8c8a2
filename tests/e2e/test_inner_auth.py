"""Inner hops on real processes: the embedder, retriever and generator serve only calls the gateway signed.

A caller that reaches the retriever directly (any pod, without the gateway) gets
UNAUTHENTICATED whatever it sends but a valid token: a forged tenant header, a
token of another key, of another service, or expired. A valid token opens only
the namespaces signed into it. Health checks and reflection stay open to probes,
and the gateway's own calls, signed per call, work end to end.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2, generator_pb2_grpc
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from rag_cli.stack import Stack, free_port
from services.common.internal_auth import (
    CLOCK_SKEW_S,
    EXPIRED_TOKEN,
    INVALID_TOKEN,
    ISSUER,
    MIN_KEY_BYTES,
    MISSING_TOKEN,
    TOKEN_METADATA_KEY,
    TokenSigner,
    key_file_variable,
    read_key,
)
from services.common.registry import EMBEDDER, GATEWAY_UPSTREAMS, GENERATOR, RETRIEVER, SERVICES, Service
from tests.conftest import THREE_TOPICS
from tests.e2e.replicas import Replicas
from tests.generator.test_openai_backend import FakeChatServer, Reply, completion
from tests.internal_calls import signed_channel

Metadata = tuple[tuple[str, str], ...]
QUESTION = "When does the nightly base backup run?"


@pytest.fixture(scope="module")
def retriever(stack: Stack) -> Iterator[retriever_pb2_grpc.RetrieverServiceStub]:
    """The session's retriever, reached directly: each call carries only the metadata it is given."""
    with grpc.insecure_channel(stack.target(RETRIEVER.name)) as channel:
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)


def _refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def _listing(
    retriever: retriever_pb2_grpc.RetrieverServiceStub, namespace: str, metadata: Metadata
) -> object:
    return retriever.ListDocuments(
        retriever_pb2.ListDocumentsRequest(namespace=namespace), metadata=metadata, timeout=30
    )


def _deleting(
    retriever: retriever_pb2_grpc.RetrieverServiceStub, namespace: str, metadata: Metadata
) -> object:
    request = retriever_pb2.DeleteRequest(namespace=namespace, document_ids=THREE_TOPICS)
    return retriever.Delete(request, metadata=metadata, timeout=30)


def _stored(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str) -> list[str]:
    listed = gateway.ListDocuments(gateway_pb2.ListDocumentsRequest(namespace=namespace), timeout=30)
    return sorted(document.document_id for document in listed.documents)


def _token(key: bytes, **claims: object) -> Metadata:
    return ((TOKEN_METADATA_KEY, jwt.encode(claims, key, algorithm="HS256")),)


def _unauthenticated(
    retriever: retriever_pb2_grpc.RetrieverServiceStub,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
    metadata: Metadata,
) -> str:
    """The details of the refusals of a listing and a delete with `metadata`, which deleted nothing."""
    listing = _refusal(lambda: _listing(retriever, namespace, metadata))
    deleting = _refusal(lambda: _deleting(retriever, namespace, metadata))
    assert (listing.code(), deleting.code()) == (grpc.StatusCode.UNAUTHENTICATED,) * 2
    assert listing.details() == deleting.details()
    assert _stored(gateway, namespace) == sorted(THREE_TOPICS)
    return listing.details() or ""


def test_a_forged_tenant_header_without_a_token_is_unauthenticated(
    retriever: retriever_pb2_grpc.RetrieverServiceStub,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    three_documents: str,
) -> None:
    forged = (("x-rag-tenant-namespaces", three_documents),)
    assert _unauthenticated(retriever, gateway, three_documents, forged) == MISSING_TOKEN


def test_a_token_signed_with_another_key_is_unauthenticated(
    retriever: retriever_pb2_grpc.RetrieverServiceStub,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    three_documents: str,
) -> None:
    other_key = TokenSigner(secrets.token_bytes(MIN_KEY_BYTES))
    forged = other_key.metadata(RETRIEVER.name, namespaces=[three_documents])
    assert _unauthenticated(retriever, gateway, three_documents, forged) == INVALID_TOKEN


def test_a_token_for_the_embedder_is_unauthenticated_at_the_retriever(
    stack: Stack,
    retriever: retriever_pb2_grpc.RetrieverServiceStub,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    three_documents: str,
) -> None:
    for_the_embedder = stack.signer().metadata(EMBEDDER.name, namespaces=[three_documents])
    assert _unauthenticated(retriever, gateway, three_documents, for_the_embedder) == INVALID_TOKEN


def test_an_expired_token_is_unauthenticated(
    stack: Stack,
    retriever: retriever_pb2_grpc.RetrieverServiceStub,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    three_documents: str,
) -> None:
    key_file = stack.internal_auth_key_file()
    expired = int(time.time() - CLOCK_SKEW_S) - 2
    stale = _token(
        read_key(key_file, str(key_file)),
        iss=ISSUER,
        aud=RETRIEVER.name,
        iat=expired - 10,
        exp=expired,
        namespaces=[three_documents],
    )
    assert _unauthenticated(retriever, gateway, three_documents, stale) == EXPIRED_TOKEN


def test_a_valid_token_for_one_namespace_is_denied_another(
    stack: Stack,
    retriever: retriever_pb2_grpc.RetrieverServiceStub,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    three_documents: str,
) -> None:
    own = f"{three_documents[:50]}-own"
    signed_for_own = stack.signer().metadata(RETRIEVER.name, namespaces=[own])

    listing = _refusal(lambda: _listing(retriever, three_documents, signed_for_own))
    deleting = _refusal(lambda: _deleting(retriever, three_documents, signed_for_own))
    served = _listing(retriever, own, signed_for_own)

    assert (listing.code(), deleting.code()) == (grpc.StatusCode.PERMISSION_DENIED,) * 2
    assert repr(three_documents) in (listing.details() or "")
    assert _stored(gateway, three_documents) == sorted(THREE_TOPICS)
    assert isinstance(served, retriever_pb2.ListDocumentsResponse)


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeChatServer]:
    server = FakeChatServer()
    server.replies = [Reply(body=completion("The base backup runs nightly at 02:00 UTC [1]."))]
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def generator_on_llm(
    stack: Stack, llm: FakeChatServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The target of a generator of its own that answers through the fake LLM."""
    processes = Replicas(stack, tmp_path_factory.mktemp("generator-llm"))
    try:
        processes.start_openai_generator("generator-llm", llm.base_url, GENERATOR_OPENAI_MODEL="fake-model")
        yield processes.target("generator-llm")
    finally:
        processes.stop()


GENERATE = generator_pb2.GenerateRequest(
    question=QUESTION,
    context=[
        generator_pb2.ContextChunk(
            document_id="runbook",
            title="Backups",
            text="The base backup runs nightly at 02:00 UTC.",
            score=0.9,
        )
    ],
)


def test_the_generator_answers_no_unsigned_call_and_the_llm_hears_nothing(
    stack: Stack, llm: FakeChatServer, generator_on_llm: str
) -> None:
    with grpc.insecure_channel(generator_on_llm) as channel:
        unsigned = generator_pb2_grpc.GeneratorServiceStub(channel)
        generate = _refusal(lambda: unsigned.Generate(GENERATE, timeout=30))
        stream = _refusal(
            lambda: list(
                unsigned.GenerateStream(generator_pb2.GenerateStreamRequest(request=GENERATE), timeout=30)
            )
        )
    heard_while_unsigned = len(llm.requests)
    with signed_channel(stack, GENERATOR, target=generator_on_llm) as channel:
        answered = generator_pb2_grpc.GeneratorServiceStub(channel).Generate(GENERATE, timeout=30)

    assert (generate.code(), stream.code()) == (grpc.StatusCode.UNAUTHENTICATED,) * 2
    assert generate.details() == stream.details() == MISSING_TOKEN
    assert heard_while_unsigned == 0
    assert answered.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    assert len(llm.requests) == 1, "the signed call reached the LLM: the fake was there to hear the others"


@pytest.mark.parametrize("service", GATEWAY_UPSTREAMS, ids=lambda service: service.name)
def test_health_and_reflection_answer_without_a_token(stack: Stack, service: Service) -> None:
    with grpc.insecure_channel(stack.target(service.name)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        overall = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        own = health.Check(health_pb2.HealthCheckRequest(service=service.grpc_service), timeout=10)
        listed = ProtoReflectionDescriptorDatabase(channel).get_services()

    assert overall.status == own.status == health_pb2.HealthCheckResponse.SERVING
    assert service.grpc_service in listed


def test_the_gateway_s_signed_calls_work_end_to_end(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str
) -> None:
    found = gateway.Search(gateway_pb2.SearchRequest(namespace=three_documents, query=QUESTION), timeout=30)
    asked = gateway.Ask(
        gateway_pb2.AskRequest(namespace=three_documents, question=QUESTION, skip_cache=True), timeout=60
    )
    streamed = list(
        gateway.AskStream(
            gateway_pb2.AskStreamRequest(
                request=gateway_pb2.AskRequest(namespace=three_documents, question=QUESTION)
            ),
            timeout=60,
        )
    )
    deleted = gateway.DeleteDocuments(
        gateway_pb2.DeleteDocumentsRequest(namespace=three_documents, document_ids=[THREE_TOPICS[1]]),
        timeout=30,
    )

    assert found.hits[0].document_id == "postgres-backup-runbook.md"
    assert asked.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    assert "02:00" in asked.answer
    assert streamed[-1].final.answer == asked.answer
    assert deleted.deleted_documents == 1
    assert _stored(gateway, three_documents) == sorted({*THREE_TOPICS} - {THREE_TOPICS[1]})


@pytest.mark.parametrize("service", SERVICES, ids=lambda service: service.name)
def test_a_service_without_its_key_file_does_not_start(
    stack: Stack, tmp_path: Path, service: Service
) -> None:
    variable = key_file_variable(service.env_prefix)
    processes = Stack(data_dir=tmp_path, ports={service.name: free_port()})
    processes.log_path(service.name).parent.mkdir(parents=True)
    # The session's environment (its database, the other services' keys) without this one's key.
    environment = {
        **{name: value for name, value in stack.shared_environment().items() if name != variable},
        **processes.listening_environment(service, processes.ports[service.name]),
    }

    processes.start_service(service.name, service.module, environment)

    assert processes.process(service.name).wait(timeout=120) != 0
    assert f"{variable} is not set" in processes.log_path(service.name).read_text()


def test_a_key_shorter_than_32_bytes_stops_start_up(stack: Stack, tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("x" * (MIN_KEY_BYTES - 1))
    processes = Stack(data_dir=tmp_path, ports={GENERATOR.name: free_port()})
    processes.log_path(GENERATOR.name).parent.mkdir(parents=True)
    environment = {
        **stack.shared_environment(),
        **processes.listening_environment(GENERATOR, processes.ports[GENERATOR.name]),
        key_file_variable(GENERATOR.env_prefix): str(short),
    }

    processes.start_service(GENERATOR.name, GENERATOR.module, environment)

    assert processes.process(GENERATOR.name).wait(timeout=120) != 0
    assert f"{short}: the key has {MIN_KEY_BYTES - 1} bytes" in processes.log_path(GENERATOR.name).read_text()
