"""The Go client, built from the committed stubs generated from protos/, asks through the gateway.

ragask is built once per module (GOPATH mode, offline: tests/test_go_generated.py).
It asks the session gateway in plaintext over loopback, and a gateway of this
module's own that requires API keys and client certificates (mTLS), in front of
the session's embedder, retriever and generator. The runbook sample is ingested
through the session gateway into a namespace the module's key grants.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import keys
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack, free_port
from services.common.registry import GATEWAY, GATEWAY_UPSTREAMS, upstream_target_variable
from services.common.tls import ClientTls
from tests.conftest import sample_document
from tests.e2e.test_tls import Pki, make_pki, wait_until_serving_tls
from tests.test_go_generated import IMPORT_PATH, run_go

QUESTION = "When does the nightly base backup run?"
RUNBOOK = "postgres-backup-runbook.md"
# "  [1] postgres-backup-runbook.md #0  score 0.168  cited"
CITED_RUNBOOK = re.compile(
    rf"^  \[\d+\] {re.escape(RUNBOOK)} #\d+  score -?\d+\.\d{{3}}  cited$", re.MULTILINE
)


@pytest.fixture(scope="module")
def ragask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gopath = tmp_path_factory.mktemp("gopath")
    binary = gopath / "bin" / "ragask"
    build = run_go(["build", "-o", str(binary), f"{IMPORT_PATH}/cmd/ragask"], gopath)
    assert build.returncode == 0, build.stderr
    return binary


@pytest.fixture(scope="module")
def runbook_namespace(gateway: gateway_pb2_grpc.GatewayServiceStub) -> str:
    """A namespace of the module's own holding the runbook, ingested through the session gateway."""
    namespace = f"go-client-{secrets.token_hex(3)}"
    reply = gateway.IngestDocuments(
        gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[sample_document(RUNBOOK)]),
        timeout=120,
    )
    assert [result.document_id for result in reply.results] == [RUNBOOK]
    return namespace


@dataclass(frozen=True)
class SecuredGateway:
    target: str
    pki: Pki
    key: str  # grants the runbook's namespace

    def mtls_flags(self) -> list[str]:
        cert, key = self.pki.client
        return [f"-ca-file={self.pki.ca}", f"-cert-file={cert}", f"-key-file={key}"]


@pytest.fixture(scope="module")
def secured_gateway(
    stack: Stack, runbook_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredGateway]:
    directory = tmp_path_factory.mktemp("go-gateway")
    pki = make_pki(directory / "pki")
    keys_file = directory / "keys.json"
    key = keys.create_key(keys_file, (runbook_namespace,), "go-client")
    processes = Stack(data_dir=directory, ports={GATEWAY.name: free_port()}, grace_period_s=1.0)
    processes.log_path(GATEWAY.name).parent.mkdir(parents=True)
    cert, private_key = pki.gateway
    prefix = GATEWAY.env_prefix
    environment = {
        **stack.shared_environment(),
        **processes.listening_environment(GATEWAY, processes.ports[GATEWAY.name]),
        **{upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS},
        f"{prefix}TLS_CERT_FILE": str(cert),
        f"{prefix}TLS_KEY_FILE": str(private_key),
        f"{prefix}TLS_CLIENT_CA_FILE": str(pki.ca),
        f"{prefix}API_KEYS_FILE": str(keys_file),
    }
    try:
        processes.start_service(GATEWAY.name, GATEWAY.module, environment)
        client_tls = ClientTls(pki.ca, *pki.client)
        wait_until_serving_tls(processes, GATEWAY.name, client_tls, time.monotonic() + 180)
        yield SecuredGateway(processes.target(GATEWAY.name), pki, key)
    finally:
        processes.stop()


def run_ragask(ragask: Path, *arguments: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    """ragask with the arguments, and RAG_API_KEY when api_key is given; no other RAG_* of the caller's."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("RAG_")}
    if api_key is not None:
        environment["RAG_API_KEY"] = api_key
    return subprocess.run(
        [str(ragask), *arguments, QUESTION], env=environment, capture_output=True, text=True, timeout=180
    )


def assert_cited_answer(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "02:00 UTC" in result.stdout
    assert "(ANSWER_OUTCOME_ANSWERED)" in result.stdout
    assert CITED_RUNBOOK.search(result.stdout), result.stdout


def test_asks_over_loopback_plaintext(ragask: Path, stack: Stack, runbook_namespace: str) -> None:
    result = run_ragask(ragask, f"-gateway={stack.gateway_target}", f"-namespace={runbook_namespace}")
    assert_cited_answer(result)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_asks_over_mtls_with_an_api_key(
    ragask: Path, secured_gateway: SecuredGateway, runbook_namespace: str, stream: bool
) -> None:
    result = run_ragask(
        ragask,
        f"-gateway={secured_gateway.target}",
        f"-namespace={runbook_namespace}",
        *secured_gateway.mtls_flags(),
        *(["-stream"] if stream else []),
        api_key=secured_gateway.key,
    )
    assert_cited_answer(result)
    # Streamed or not, the answer comes first and the outcome and sources after it.
    answer, _, trailer = result.stdout.partition("(ANSWER_OUTCOME_ANSWERED)")
    assert "02:00 UTC" in answer
    assert CITED_RUNBOOK.search(trailer)


def test_the_api_key_flag_does_what_the_variable_does(
    ragask: Path, secured_gateway: SecuredGateway, runbook_namespace: str
) -> None:
    result = run_ragask(
        ragask,
        f"-gateway={secured_gateway.target}",
        f"-namespace={runbook_namespace}",
        f"-api-key={secured_gateway.key}",
        "-stream",
        *secured_gateway.mtls_flags(),
    )
    assert_cited_answer(result)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_wrong_api_key_is_unauthenticated(
    ragask: Path, secured_gateway: SecuredGateway, runbook_namespace: str, stream: bool
) -> None:
    wrong = secured_gateway.key[:-4] + ("AAAA" if not secured_gateway.key.endswith("AAAA") else "BBBB")
    result = run_ragask(
        ragask,
        f"-gateway={secured_gateway.target}",
        f"-namespace={runbook_namespace}",
        *secured_gateway.mtls_flags(),
        *(["-stream"] if stream else []),
        api_key=wrong,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("ragask: [UNAUTHENTICATED] "), result.stderr
    assert wrong not in result.stderr


def test_without_a_client_certificate_the_mtls_gateway_is_unavailable(
    ragask: Path, secured_gateway: SecuredGateway, runbook_namespace: str
) -> None:
    result = run_ragask(
        ragask,
        f"-gateway={secured_gateway.target}",
        f"-namespace={runbook_namespace}",
        f"-ca-file={secured_gateway.pki.ca}",
        "-timeout=10s",
        api_key=secured_gateway.key,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("ragask: [UNAVAILABLE] "), result.stderr


def test_a_bad_namespace_shows_the_gateways_message(ragask: Path, stack: Stack) -> None:
    result = run_ragask(ragask, f"-gateway={stack.gateway_target}", "-namespace=Not A Namespace!")
    assert result.returncode == 1
    assert result.stderr.startswith("ragask: [INVALID_ARGUMENT] "), result.stderr
    assert "namespace" in result.stderr
