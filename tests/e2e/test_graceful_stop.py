"""SIGTERM with a call in flight: health goes NOT_SERVING, the call finishes, the process exits 0.

A gateway and a generator of their own (the session stack's embedder and
retriever behind them); the generator's LLM, the fake chat-completions server,
holds its reply until the test lets it go, so an Ask stays in flight for as long
as the test needs. The test stops one of the two processes while that Ask is
held, sees its health change on a Watch stream opened before the signal (a
stopping server takes no new calls, so a Check could not ask), and only then
lets the reply go.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2
from rag_cli.stack import Stack, free_port
from services.common.registry import (
    GATEWAY,
    GATEWAY_UPSTREAMS,
    GENERATOR,
    Service,
    upstream_target_variable,
)
from tests.conftest import sample_document
from tests.e2e.held_llm import HeldChatServer
from tests.generator.test_openai_backend import Reply, completion

# Long enough that only a drain that waits for nothing, never a slow machine, runs it out.
GRACE_S = 60
WAIT_S = 60
QUESTION = "When does the nightly base backup run?"
ANSWER = "The base backup runs nightly at 02:00 UTC [1]."


@dataclass
class HeldAskSystem:
    processes: Stack
    llm: HeldChatServer
    release: threading.Event


@pytest.fixture
def held_ask_system(stack: Stack, tmp_path: Path) -> Iterator[HeldAskSystem]:
    release = threading.Event()
    llm = HeldChatServer()
    llm.replies = [Reply(body=completion(ANSWER), release=release)]
    llm.start()
    ports = {GENERATOR.name: free_port(), GATEWAY.name: free_port()}
    processes = Stack(data_dir=tmp_path, ports=ports, grace_period_s=GRACE_S)
    processes.log_path("any").parent.mkdir(parents=True)
    try:
        _start(
            processes,
            stack,
            GENERATOR,
            GENERATOR_BACKEND="openai",
            GENERATOR_OPENAI_BASE_URL=llm.base_url,
            GENERATOR_OPENAI_MODEL="fake-model",
        )
        targets = {upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS}
        targets[upstream_target_variable(GENERATOR)] = processes.target(GENERATOR.name)
        _start(processes, stack, GATEWAY, **targets)
        yield HeldAskSystem(processes, llm, release)
    finally:
        release.set()  # no reply left hanging in the fake
        processes.stop()
        llm.stop()


def _start(processes: Stack, session: Stack, service: Service, **settings: str) -> None:
    """`service` on its port of `processes`, with the session's database and telemetry."""
    environment = {
        **session.shared_environment(),
        **processes.listening_environment(service, processes.ports[service.name]),
        **settings,
    }
    processes.start_service(service.name, service.module, environment)
    processes.wait_until_serving(service.name, deadline=time.monotonic() + 180)


@pytest.mark.parametrize("stopped", [GENERATOR.name, GATEWAY.name])
def test_sigterm_lets_the_call_in_flight_finish_then_the_process_exits_0(
    held_ask_system: HeldAskSystem, stopped: str, namespace: str
) -> None:
    processes, llm = held_ask_system.processes, held_ask_system.llm
    process = processes.process(stopped)
    with (
        grpc.insecure_channel(processes.target(GATEWAY.name)) as gateway_channel,
        grpc.insecure_channel(processes.target(stopped)) as stopped_channel,
    ):
        gateway = gateway_pb2_grpc.GatewayServiceStub(gateway_channel)
        gateway.IngestDocuments(
            gateway_pb2.IngestDocumentsRequest(
                namespace=namespace, documents=[sample_document("postgres-backup-runbook.md")]
            ),
            timeout=WAIT_S,
        )
        health = health_pb2_grpc.HealthStub(stopped_channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=WAIT_S
        )
        before = next(health).status
        request = gateway_pb2.AskRequest(namespace=namespace, question=QUESTION, skip_cache=True)
        ask = gateway.Ask.future(request, timeout=WAIT_S)
        llm.wait_for_requests(1)  # the Ask is held at the LLM

        process.send_signal(signal.SIGTERM)
        after = next(health).status
        health.cancel()  # a Watch is a call in flight too: it would hold the drain
        held_through_the_change = not ask.done()
        held_ask_system.release.set()
        answer = ask.result(timeout=WAIT_S)
        exit_code = process.wait(timeout=GRACE_S)

    assert before == health_pb2.HealthCheckResponse.SERVING
    assert after == health_pb2.HealthCheckResponse.NOT_SERVING
    assert held_through_the_change, "the Ask was still in flight when the service began to stop"
    assert answer.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    assert "02:00" in answer.answer
    assert exit_code == 0, processes.log_tail(stopped)
    assert len(llm.requests) == 1, "answered by the first attempt, not a retry elsewhere"
