"""Start-up, graceful stop and a dependency that is down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack, free_port
from services.common.registry import RETRIEVER
from tests.internal_calls import signed_channel


def _start(module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env})


def _wait_serving(target: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise TimeoutError(f"{target} never reported SERVING")


def test_sigterm_stops_a_service_cleanly(tmp_path: Path) -> None:
    port = free_port()
    process = _start(
        "services.generator",
        {
            **Stack(data_dir=tmp_path).internal_auth_environment(),
            "GENERATOR_PORT": str(port),
            "GENERATOR_GRACE_PERIOD_S": "2",
        },
    )
    try:
        _wait_serving(f"127.0.0.1:{port}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()


def test_a_dependency_that_is_down_gives_unavailable_not_a_hang(stack: Stack) -> None:
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    gateway_process = _start(
        "gateway",
        {
            **stack.internal_auth_environment(),
            "GATEWAY_PORT": str(port),
            "GATEWAY_EMBEDDER_TARGET": dead,
            "GATEWAY_RETRIEVER_TARGET": stack.target("retriever"),
            "GATEWAY_GENERATOR_TARGET": stack.target("generator"),
        },
    )
    try:
        _wait_serving(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            with pytest.raises(grpc.RpcError) as raised:
                gateway.Ask(gateway_pb2.AskRequest(namespace="docs", question="Anyone there?"), timeout=20)
    finally:
        gateway_process.send_signal(signal.SIGTERM)
        gateway_process.wait(timeout=15)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # UNAVAILABLE, not DEADLINE_EXCEEDED: the gateway gave up on the dead
    # embedder after its retries instead of waiting out the caller's deadline.
    assert "embedder is unavailable" in (raised.value.details() or "")


def test_retriever_is_not_serving_until_its_database_is_reachable(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    port = free_port()
    unreachable = f"postgresql://postgres@/postgres?host={tmp_path_factory.mktemp('no-db')}"
    keys = Stack(data_dir=tmp_path_factory.mktemp("keys"))
    process = _start(
        "services.retriever",
        {**keys.internal_auth_environment(), "RETRIEVER_PORT": str(port), "DATABASE_URL": unreachable},
    )
    try:
        with signed_channel(keys, RETRIEVER, target=f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = _first_health_answer(health)
            call_error = _call_error(channel)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=15)
    finally:
        process.kill()

    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert call_error.code() == grpc.StatusCode.UNAVAILABLE
    assert "still starting" in (call_error.details() or "")
    assert exit_code == 0, "SIGTERM during start-up still stops cleanly"


def _first_health_answer(health: health_pb2_grpc.HealthStub) -> int:
    deadline = time.monotonic() + 30
    while True:
        try:
            return int(health.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _call_error(channel: grpc.Channel) -> grpc.RpcError:
    from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc

    retriever = retriever_pb2_grpc.RetrieverServiceStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        retriever.GetDocumentHashes(
            retriever_pb2.GetDocumentHashesRequest(namespace="docs", document_ids=["a"]), timeout=5
        )
    return raised.value
