"""What bounds a gateway call before and while it is worked on: the size of its message, the calls
gRPC serves at once, and how long it may run whatever deadline its caller sets.

The message size is met on the session gateway, at its default; the other two
on gateways of their own beside the session stack, with limits low enough to
reach with a few calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import GatewaySettings
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from tests.conftest import sample_document
from tests.e2e.held_llm import PausedStreamServer
from tests.e2e.replicas import Replicas, gateway_with_openai_generator
from tests.e2e.test_auth import rejection

QUESTION = "When does the nightly base backup run?"
# Far beyond what any step here takes: reaching it is a failure, never the test's way of waiting.
WAIT_S = 60
# The caller's deadline and the LLM's timeout in the deadline test: neither may be what ends the call.
UNREACHED_TIMEOUT_S = 600
# The gateway's cap on a call's deadline there: long enough for the search before the answer.
MAX_DEADLINE_S = 5


def test_a_message_over_the_size_limit_is_refused_by_grpc_and_the_next_call_is_served(
    stack: Stack, namespace: str
) -> None:
    limit = GatewaySettings().max_message_bytes
    oversized = gateway_pb2.SearchRequest(namespace=namespace, query="x" * limit)
    # The client would refuse to send it otherwise.
    options = [("grpc.max_send_message_length", 2 * limit)]
    with grpc.insecure_channel(stack.gateway_target, options=options) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        refused = rejection(lambda: gateway.Search(oversized, timeout=WAIT_S))
        served = gateway.Search(
            gateway_pb2.SearchRequest(namespace=namespace, query="backup"), timeout=WAIT_S
        )

    assert oversized.ByteSize() > limit
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"vs. {limit})" in (refused.details() or ""), refused.details()
    assert list(served.hits) == [], "served: an empty namespace has no hits"


@pytest.fixture
def small_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose gRPC server serves 3 calls at once (GATEWAY_MAX_CONCURRENT_RPCS)."""
    processes = Replicas(stack, tmp_path_factory.mktemp("gateway-limits"))
    try:
        processes.start(["gateway-small"], GATEWAY_MAX_CONCURRENT_RPCS="3", GATEWAY_MAX_IN_FLIGHT="2")
        yield processes.target("gateway-small")
    finally:
        processes.stop()


def check_once_a_call_has_ended(
    health: health_pb2_grpc.HealthStub, request: health_pb2.HealthCheckRequest
) -> health_pb2.HealthCheckResponse:
    # The server counts a call out when its task ends, a moment after its caller
    # cancelled it: no event of the caller's marks that, so retry on the refusal,
    # bounded only as a failure.
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            response: health_pb2.HealthCheckResponse = health.Check(request, timeout=WAIT_S)
            return response
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_calls_beyond_max_concurrent_rpcs_are_refused_by_grpc(small_gateway: str) -> None:
    request = health_pb2.HealthCheckRequest()
    with grpc.insecure_channel(small_gateway) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        # A health watch stays open until cancelled: a call the server is serving all along.
        watches = [health.Watch(request, timeout=WAIT_S) for _ in range(3)]
        try:
            first = [next(watch).status for watch in watches]  # each has reached the server
            refused = rejection(lambda: health.Check(request, timeout=WAIT_S))
            watches[0].cancel()
            served = check_once_a_call_has_ended(health, request)
        finally:
            for watch in watches:
                watch.cancel()

    assert first == [health_pb2.HealthCheckResponse.SERVING] * 3
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Concurrent RPC limit exceeded" in (refused.details() or "")
    assert served.status == health_pb2.HealthCheckResponse.SERVING


def test_a_callers_deadline_is_cut_to_the_gateways_limit_and_the_work_stops_there(
    stack: Stack,
    tmp_path_factory: pytest.TempPathFactory,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
) -> None:
    # Stored through the session gateway: the capped one shares its retriever.
    gateway.IngestDocuments(
        gateway_pb2.IngestDocumentsRequest(
            namespace=namespace, documents=[sample_document("postgres-backup-runbook.md")]
        ),
        timeout=WAIT_S,
    )
    ask = gateway_pb2.AskRequest(namespace=namespace, question=QUESTION, skip_cache=True)
    llm = PausedStreamServer()
    llm.start()
    try:
        with (
            gateway_with_openai_generator(
                stack,
                tmp_path_factory.mktemp("deadline-cap"),
                llm.base_url,
                GENERATOR_OPENAI_MODEL="fake-model",
                GENERATOR_OPENAI_TIMEOUT_S=str(UNREACHED_TIMEOUT_S),
                GATEWAY_MAX_DEADLINE_S=str(MAX_DEADLINE_S),
                GATEWAY_DEFAULT_DEADLINE_S=str(MAX_DEADLINE_S),
            ) as target,
            grpc.insecure_channel(target) as channel,
        ):
            capped = gateway_pb2_grpc.GatewayServiceStub(channel)
            call = capped.AskStream(gateway_pb2.AskStreamRequest(request=ask), timeout=UNREACHED_TIMEOUT_S)
            sources = next(call)
            delta = next(call)  # the LLM has written its first words and holds the rest
            with pytest.raises(grpc.RpcError) as ended:
                next(call)
            llm_stream_closed = llm.hung_up.wait(WAIT_S)
    finally:
        llm.stop()

    assert sources.sources.sources, "the answer was under way"
    assert delta.delta.text == PausedStreamServer.FIRST_DELTA
    # The gateway's status, not the caller's own deadline (which would read "Deadline Exceeded").
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (ended.value.details() or "").startswith("generator"), ended.value.details()
    assert llm_stream_closed, "the generator went on past the gateway's deadline"
