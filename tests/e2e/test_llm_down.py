"""An LLM server that is down: UNAVAILABLE at the gateway, and everything else keeps serving.

A generator with the openai backend points at a port nothing listens on, behind a
gateway of its own; embedder and retriever are the session stack's, shared with the
stack's own gateway, whose generator (extractive) is fine.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2
from rag_cli.stack import Stack, free_port
from tests.conftest import sample_document
from tests.e2e.replicas import gateway_with_openai_generator

DOCUMENT = "postgres-backup-runbook.md"
QUESTION = "When does the nightly base backup run?"
# Far longer than the generator needs to give up on a dead LLM (one retry) and the
# gateway on the generator (its channel's retries): the call must end with
# UNAVAILABLE well before it, not run into DEADLINE_EXCEEDED.
DEADLINE_S = 60


@pytest.fixture(scope="module")
def llm_down_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The target of a gateway whose generator's LLM server is down."""
    with gateway_with_openai_generator(
        stack,
        tmp_path_factory.mktemp("llm-down"),
        f"http://127.0.0.1:{free_port()}/v1",  # nothing listens
        GENERATOR_OPENAI_MODEL="smollm2-135m-instruct",
        GENERATOR_OPENAI_MAX_RETRIES="1",
    ) as target:
        yield target


@pytest.fixture
def ingested(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str) -> str:
    gateway.IngestDocuments(
        gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[sample_document(DOCUMENT)])
    )
    return namespace


def test_ask_is_unavailable_naming_the_llm_and_the_rest_keeps_serving(
    llm_down_gateway: str, gateway: gateway_pb2_grpc.GatewayServiceStub, ingested: str
) -> None:
    with grpc.insecure_channel(llm_down_gateway) as channel:
        down = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            down.Ask(gateway_pb2.AskRequest(namespace=ingested, question=QUESTION), timeout=DEADLINE_S)
        # Retrieval through the same gateway is unaffected: embedder and retriever serve on.
        found = down.Search(gateway_pb2.SearchRequest(namespace=ingested, query=QUESTION), timeout=DEADLINE_S)

    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    details = error.details() or ""
    assert "generator is unavailable" in details
    assert "LLM" in details
    assert found.hits
    # The stack's own gateway, with a working generator, still answers from the same data.
    answered = gateway.Ask(gateway_pb2.AskRequest(namespace=ingested, question=QUESTION), timeout=DEADLINE_S)
    assert answered.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    assert answered.citations


def test_ask_stream_sends_the_sources_then_fails_unavailable(llm_down_gateway: str, ingested: str) -> None:
    request = gateway_pb2.AskRequest(namespace=ingested, question=QUESTION)
    events: list[gateway_pb2.AskStreamResponse] = []
    with grpc.insecure_channel(llm_down_gateway) as channel:
        down = gateway_pb2_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            events.extend(down.AskStream(gateway_pb2.AskStreamRequest(request=request), timeout=DEADLINE_S))

    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "LLM" in (error.details() or "")
    # Retrieval had worked: the sources came before the generator failed.
    assert [event.WhichOneof("event") for event in events] == ["sources"]
