"""Through the gateway, with a retriever reading from a real streaming replica whose replay is paused.

A gateway and a retriever of the test's own: the retriever writes to the
session's PostgreSQL and reads from a standby built from it. With the standby
frozen behind a write, the write's token (the index_version of the ingest's
response) still reads the write, and the answer cache never keeps an answer
computed from older data under a newer version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2
from rag_cli.main import main
from rag_cli.stack import Stack
from services.common.registry import GATEWAY_UPSTREAMS, RETRIEVER, upstream_target_variable
from tests.e2e.replicas import Replicas
from tests.retriever.streaming_replica import StreamingReplica, with_socket_dir

BEFORE = "The staging cluster is rebuilt every Monday at 06:00 UTC."
AFTER = "Parking passes for visitors are issued by the front desk in building B."
QUESTION = "Who issues parking passes for visitors?"


@pytest.fixture(scope="module")
def frozen_standby(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamingReplica]:
    standby = StreamingReplica(stack.embedded_postgres, Path(tmp_path_factory.mktemp("standby")))
    standby.start()
    yield standby
    standby.stop()


@pytest.fixture(scope="module")
def gateway_over_standby_target(
    stack: Stack, frozen_standby: StreamingReplica, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    replicas = Replicas(stack, tmp_path_factory.mktemp("replica-processes"))
    primary = stack.shared_environment()["DATABASE_URL"]
    replicas.start(
        ["retriever-r"],
        RETRIEVER_READ_DATABASE_URLS=with_socket_dir(primary, frozen_standby.socket_dir),
        # In rotation however far behind: the token alone must decide.
        RETRIEVER_MAX_REPLICA_LAG_MS="3600000",
    )
    targets = {upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS}
    targets[upstream_target_variable(RETRIEVER)] = replicas.target("retriever-r")
    replicas.start(["gateway-r"], **targets)
    yield replicas.target("gateway-r")
    replicas.stop()


@pytest.fixture(scope="module")
def gateway_over_standby(gateway_over_standby_target: str) -> Iterator[gateway_pb2_grpc.GatewayServiceStub]:
    with grpc.insecure_channel(gateway_over_standby_target) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


def ingest(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, doc_id: str, text: str) -> int:
    response = gateway.IngestDocuments(
        gateway_pb2.IngestDocumentsRequest(
            namespace=namespace, documents=[gateway_pb2.Document(id=doc_id, utf8_content=text.encode())]
        ),
        timeout=60,
    )
    assert response.index_version > 0
    return int(response.index_version)


def found(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, token: int | None) -> list[str]:
    retrieval = gateway_pb2.RetrievalOptions(top_k=5)
    if token is not None:
        retrieval.min_index_version = token
    response = gateway.Search(
        gateway_pb2.SearchRequest(namespace=namespace, query=QUESTION, retrieval=retrieval), timeout=30
    )
    return [hit.document_id for hit in response.hits]


def test_the_token_reads_a_write_the_standby_has_not_replayed_and_the_cache_stays_true(
    gateway_over_standby: gateway_pb2_grpc.GatewayServiceStub,
    frozen_standby: StreamingReplica,
    namespace: str,
) -> None:
    gateway = gateway_over_standby
    first = ingest(gateway, namespace, "staging", BEFORE)
    # Until the standby has the first document, searches there find nothing.
    for _ in range(100):
        if found(gateway, namespace, None):
            break
    assert found(gateway, namespace, None) == ["staging"]
    asyncio.run(frozen_standby.execute("SELECT pg_wal_replay_pause()"))
    try:
        token = ingest(gateway, namespace, "parking", AFTER)
        assert token > first

        # The standby, frozen, answers without the token; the token reads the write.
        assert found(gateway, namespace, None) == ["staging"]
        assert "parking" in found(gateway, namespace, token)

        # Ask keys its cache on the version read on the primary and searches at
        # least that recent, so it answers from the new document, and caches that.
        for expect_cached in (False, True):
            answer = gateway.Ask(gateway_pb2.AskRequest(namespace=namespace, question=QUESTION), timeout=60)
            assert answer.cached is expect_cached
            assert answer.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
            assert [s.hit.document_id for s in answer.sources if s.cited] == ["parking"]
    finally:
        asyncio.run(frozen_standby.execute("SELECT pg_wal_replay_resume()"))


def test_the_cli_reads_its_own_ingest_with_after_ingest(
    gateway_over_standby_target: str,
    frozen_standby: StreamingReplica,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def rag(*args: str) -> str:
        assert main(["--gateway", gateway_over_standby_target, "--namespace", namespace, *args]) == 0
        return capsys.readouterr().out

    (tmp_path / "staging.md").write_text(BEFORE)
    rag("ingest", str(tmp_path / "staging.md"))
    # Once the standby has the first document, searches without the token are served there.
    for _ in range(100):
        if "staging.md" in rag("search", QUESTION):
            break
    asyncio.run(frozen_standby.execute("SELECT pg_wal_replay_pause()"))
    try:
        (tmp_path / "parking.md").write_text(AFTER)
        ingested = rag("ingest", str(tmp_path / "parking.md"))

        assert "parking.md" not in rag("search", QUESTION)
        assert "parking.md" in rag("search", QUESTION, "--after-ingest")
        version = int(ingested.split("index version ")[1].split(":")[0])
        assert "parking.md" in rag("search", QUESTION, "--min-index-version", str(version))
        assert "parking.md" in rag("ask", QUESTION, "--after-ingest", "--no-cache")
    finally:
        asyncio.run(frozen_standby.execute("SELECT pg_wal_replay_resume()"))


def test_a_token_from_the_future_is_served_by_the_primary(
    gateway_over_standby: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    ingest(gateway_over_standby, namespace, "parking", AFTER)
    assert "parking" in found(gateway_over_standby, namespace, 10**12)


def test_a_negative_token_is_refused(
    gateway_over_standby: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        found(gateway_over_standby, namespace, -1)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "min_index_version" in (raised.value.details() or "")
