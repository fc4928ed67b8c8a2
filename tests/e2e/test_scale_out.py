"""Scale-out on one machine: replicas behind one gateway, spread by gRPC client-side load balancing.

Each replica exports its spans with its own `service.instance.id`, and every call
starts a trace of its own, so the spans tell which replica served which call.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from tests.conftest import sample_document
from tests.e2e.replicas import Replicas
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

# The server span each Search leaves in a replica.
SERVER_SPANS = {
    "embedder": "/rag.embedder.v1.EmbedderService/Embed",
    "retriever": "/rag.retriever.v1.RetrieverService/Search",
}
CALLS = 40


@pytest.fixture
def replicas(stack: Stack, tmp_path: Path) -> Iterator[Replicas]:
    started = Replicas(stack, tmp_path)
    yield started
    started.stop()


@dataclass(frozen=True)
class Call:
    trace_id: str
    started: float
    error: str | None  # the status code's name when the call failed


def search(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str) -> Call:
    trace_id, started = secrets.token_hex(16), time.monotonic()
    try:
        gateway.Search(
            gateway_pb2.SearchRequest(namespace=namespace, query="When does the nightly base backup run?"),
            metadata=(("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),),
            timeout=30,
        )
    except grpc.RpcError as error:
        return Call(trace_id, started, error.code().name)
    return Call(trace_id, started, None)


def served_by(receiver: OtlpReceiver, calls: Sequence[Call], service: str) -> dict[str, str]:
    """trace id -> the replica whose server span is in that call's trace, once every call's has arrived."""
    trace_ids = {call.trace_id for call in calls}

    def replicas_of(spans: list[ReceivedSpan]) -> dict[str, str]:
        return {
            span.trace_id: span.instance_id
            for span in spans
            if span.trace_id in trace_ids
            and span.name == SERVER_SPANS[service]
            and span.instance_id.startswith(f"{service}-")
        }

    found = replicas_of(receiver.wait_for(lambda spans: len(replicas_of(spans)) == len(trace_ids)))
    assert found.keys() == trace_ids, f"every call left a {service} span"
    return found


def wait_until_every_replica_serves(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
    receiver: OtlpReceiver,
    replicas: Sequence[str],
    within_s: float = 30.0,
) -> None:
    """Search until each named replica has served a call, or the time is up.

    round_robin picks only among replicas it is connected to; on a loaded machine
    the gateway's second connection can come up after its first calls, which then
    all go to the first replica. Counting starts once every replica is in play.
    """
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        calls = [search(gateway, namespace) for _ in range(4)]
        seen = {
            replica
            for service in {name.split("-")[0] for name in replicas}
            for replica in served_by(receiver, calls, service).values()
        }
        if seen >= set(replicas):
            return


def test_round_robin_spreads_calls_over_replicas_and_losing_one_fails_no_call(
    replicas: Replicas, stack: Stack, otlp_receiver: OtlpReceiver, namespace: str
) -> None:
    replicas.start(["embedder-a", "embedder-b", "retriever-a", "retriever-b"])
    replicas.start(
        ["gateway-rr"],
        GATEWAY_EMBEDDER_TARGET=replicas.targets("embedder-a", "embedder-b"),
        GATEWAY_RETRIEVER_TARGET=replicas.targets("retriever-a", "retriever-b"),
        GATEWAY_GENERATOR_TARGET=stack.target("generator"),
    )
    with grpc.insecure_channel(replicas.target("gateway-rr")) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        gateway.IngestDocuments(
            gateway_pb2.IngestDocumentsRequest(
                namespace=namespace, documents=[sample_document("postgres-backup-runbook.md")]
            )
        )

        serving = ["embedder-a", "embedder-b", "retriever-a", "retriever-b"]
        wait_until_every_replica_serves(gateway, namespace, otlp_receiver, serving)

        # 1. Sequential calls: round_robin takes turns over the replicas.
        calls = [search(gateway, namespace) for _ in range(CALLS)]
        assert [call.error for call in calls] == [None] * CALLS
        for service in ("embedder", "retriever"):
            served = Counter(served_by(otlp_receiver, calls, service).values())
            assert served.keys() == {f"{service}-a", f"{service}-b"}, (
                f"{served}\n{replicas.log_tail(f'{service}-b')}\n{replicas.log_tail('gateway-rr')}"
            )
            assert min(served.values()) >= CALLS // 4, f"{service} calls are spread, not pinned: {served}"

        # 2. Four callers at once; after the first quarter of their calls, kill -9
        # one replica of each, so calls are on their way to or inside it.
        with ThreadPoolExecutor(max_workers=4) as callers:
            pending = [callers.submit(search, gateway, namespace) for _ in range(CALLS)]
            completed = as_completed(pending)
            for _ in range(CALLS // 4):
                next(completed)
            replicas.kill("embedder-a")
            replicas.kill("retriever-a")
            killed_at = time.monotonic()
            calls = [future.result() for future in pending]

    # No caller sees the loss: an attempt that hit a killed replica failed with
    # UNAVAILABLE and the gateway's retry policy (UNAVAILABLE only, at most 3
    # attempts) sent it again, to the survivor. The test itself never retries.
    assert [call.error for call in calls] == [None] * CALLS
    after_kill = [call for call in calls if call.started > killed_at]
    assert len(after_kill) >= CALLS // 4, "enough calls came after the kill to tell"
    for service in ("embedder", "retriever"):
        served = Counter(served_by(otlp_receiver, after_kill, service).values())
        assert served == {f"{service}-b": len(after_kill)}, "calls after the kill go to the survivor"


def test_pick_first_policy_sends_every_call_to_one_replica(
    replicas: Replicas, stack: Stack, otlp_receiver: OtlpReceiver, namespace: str
) -> None:
    # The contrast that shows the counting above measures the policy, not chance.
    replicas.start(["retriever-a", "retriever-b"])
    replicas.start(
        ["gateway-pf"],
        GATEWAY_LB_POLICY="pick_first",
        GATEWAY_EMBEDDER_TARGET=stack.target("embedder"),
        GATEWAY_RETRIEVER_TARGET=replicas.targets("retriever-a", "retriever-b"),
        GATEWAY_GENERATOR_TARGET=stack.target("generator"),
    )
    with grpc.insecure_channel(replicas.target("gateway-pf")) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        calls = [search(gateway, namespace) for _ in range(CALLS // 2)]

    assert [call.error for call in calls] == [None] * (CALLS // 2)
    served = Counter(served_by(otlp_receiver, calls, "retriever").values())
    assert len(served) == 1, served
