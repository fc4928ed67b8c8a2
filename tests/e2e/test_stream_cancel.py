"""A client that cancels an AskStream mid-answer stops the whole chain, down to the LLM.

A gateway of its own in front of a generator on the openai backend, whose LLM
(the fake chat-completions server, the real HTTP protocol) sends the first
words of its answer and then holds the rest. Only a cancellation passed on by
the gateway to the generator, and by the generator to its LLM call, closes that
HTTP stream: every timeout on the way is set far beyond the test's waits.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from tests.conftest import sample_document
from tests.e2e.held_llm import PausedStreamServer
from tests.e2e.replicas import gateway_with_openai_generator

QUESTION = "When does the nightly base backup run?"
# The caller's deadline (passed on to the generator) and the generator's LLM timeout:
# neither may end the LLM's stream while the test waits for the cancellation to.
UNREACHED_TIMEOUT_S = 600
WAIT_S = 60


@pytest.fixture
def llm() -> Iterator[PausedStreamServer]:
    server = PausedStreamServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gateway_target(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, llm: PausedStreamServer
) -> Iterator[str]:
    with gateway_with_openai_generator(
        stack,
        tmp_path_factory.mktemp("stream-cancel"),
        llm.base_url,
        GENERATOR_OPENAI_MODEL="fake-model",
        GENERATOR_OPENAI_TIMEOUT_S=str(UNREACHED_TIMEOUT_S),
    ) as target:
        yield target


def test_cancelling_an_ask_stream_mid_answer_closes_the_llm_stream(
    gateway_target: str, llm: PausedStreamServer, namespace: str
) -> None:
    with grpc.insecure_channel(gateway_target) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        gateway.IngestDocuments(
            gateway_pb2.IngestDocumentsRequest(
                namespace=namespace, documents=[sample_document("postgres-backup-runbook.md")]
            ),
            timeout=WAIT_S,
        )
        request = gateway_pb2.AskRequest(namespace=namespace, question=QUESTION, skip_cache=True)
        call = gateway.AskStream(gateway_pb2.AskStreamRequest(request=request), timeout=UNREACHED_TIMEOUT_S)
        sources = next(call)
        delta = next(call)  # the LLM has written its first words and holds the rest
        hung_up_before_cancel = llm.hung_up.is_set()

        call.cancel()
        llm_stream_closed = llm.hung_up.wait(WAIT_S)
        with pytest.raises(grpc.RpcError) as ended:
            next(call)

    assert sources.sources.sources, "the answer was under way: sources sent"
    assert delta.delta.text == PausedStreamServer.FIRST_DELTA
    assert not hung_up_before_cancel
    assert llm_stream_closed, "the generator went on reading an answer nobody will see"
    assert ended.value.code() == grpc.StatusCode.CANCELLED
    assert len(llm.requests) == 1, "the cancelled call was not retried"
