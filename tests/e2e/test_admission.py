"""Deliberate overload: past GATEWAY_MAX_IN_FLIGHT the gateway refuses at once with RESOURCE_EXHAUSTED.

A gateway of its own, limited to two calls in flight, in front of a generator
whose LLM (the fake chat-completions server, the real HTTP protocol) holds its
replies until the test releases them: two Asks then stay in flight as long as
the test wants, which makes "the gateway is full" a state, not a race. "At once"
is shown by order, not by a clock: the refusal comes back while the admitted
calls are still held, so it cannot have waited for a slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from tests.conftest import sample_document
from tests.e2e.held_llm import HeldChatServer
from tests.e2e.replicas import gateway_with_openai_generator
from tests.generator.test_openai_backend import Reply, completion

LIMIT = 2
QUESTION = "When does the nightly base backup run?"


@dataclass
class Overloadable:
    gateway: gateway_pb2_grpc.GatewayServiceStub
    channel: grpc.Channel
    llm: HeldChatServer
    release: threading.Event
    namespace: str

    def ask(self) -> grpc.Future[gateway_pb2.AskResponse]:
        request = gateway_pb2.AskRequest(namespace=self.namespace, question=QUESTION, skip_cache=True)
        return self.gateway.Ask.future(request, timeout=60)

    def hold(self, calls: int) -> list[grpc.Future[gateway_pb2.AskResponse]]:
        """`calls` Asks, each admitted and held at the LLM when this returns."""
        held = [self.ask() for _ in range(calls)]
        self.llm.wait_for_requests(calls)
        return held

    def search(self) -> gateway_pb2.SearchResponse:
        response: gateway_pb2.SearchResponse = self.gateway.Search(
            gateway_pb2.SearchRequest(namespace=self.namespace, query=QUESTION), timeout=30
        )
        return response

    def search_once_a_slot_is_free(self) -> gateway_pb2.SearchResponse:
        # A slot is given back when the server has finished the call, a moment
        # after its caller has the answer (or has cancelled): no event of the
        # caller's marks it, so retry on the refusal, bounded only as a failure.
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.search()
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@pytest.fixture
def overloadable(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, namespace: str
) -> Iterator[Overloadable]:
    release = threading.Event()
    llm = HeldChatServer()
    llm.replies = [Reply(body=completion("The base backup runs nightly at 02:00 UTC [1]."), release=release)]
    llm.start()
    try:
        with (
            gateway_with_openai_generator(
                stack,
                tmp_path_factory.mktemp("admission"),
                llm.base_url,
                GENERATOR_OPENAI_MODEL="fake-model",
                GATEWAY_MAX_IN_FLIGHT=str(LIMIT),
            ) as target,
            grpc.insecure_channel(target) as channel,
        ):
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            gateway.IngestDocuments(
                gateway_pb2.IngestDocumentsRequest(
                    namespace=namespace, documents=[sample_document("postgres-backup-runbook.md")]
                )
            )
            yield Overloadable(gateway, channel, llm, release, namespace)
    finally:
        release.set()  # no reply left hanging in the fake
        llm.stop()


def test_past_the_limit_calls_are_refused_at_once_with_a_retry_hint_and_probes_still_answer(
    overloadable: Overloadable,
) -> None:
    held = overloadable.hold(LIMIT)

    with pytest.raises(grpc.RpcError) as refused:
        overloadable.search()
    # Nothing has let the held calls go yet: a refusal that came back now did not
    # wait for one of their slots.
    held_while_refused = [not future.done() for future in held]
    health = health_pb2_grpc.HealthStub(overloadable.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )

    overloadable.release.set()
    answers = [future.result() for future in held]
    after = overloadable.search_once_a_slot_is_free()

    error = refused.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "GATEWAY_MAX_IN_FLIGHT" in (error.details() or "")
    assert held_while_refused == [True] * LIMIT, "refused while the admitted calls were in flight"
    trailing = {metadatum.key: metadatum.value for metadatum in error.trailing_metadata()}
    pushback_ms = int(trailing["grpc-retry-pushback-ms"])
    assert pushback_ms > 0
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert [detail.Unpack(retry) for detail in status.details] == [True]
    assert retry.retry_delay.ToMilliseconds() == pushback_ms
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert all("02:00" in answer.answer for answer in answers), "the admitted calls were served"
    assert after.hits, "the slots were given back"


def test_a_cancelled_call_gives_its_slot_back(overloadable: Overloadable) -> None:
    held = overloadable.hold(LIMIT)

    held[0].cancel()
    served_while_one_is_held = overloadable.search_once_a_slot_is_free()
    overloadable.release.set()

    assert served_while_one_is_held.hits
    assert held[1].result().answer
