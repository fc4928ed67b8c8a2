"""TLS and mTLS on real service processes, with certificates made for the test.

One module-wide system: embedder, retriever and generator that require client
certificates (mTLS), and a gateway that serves TLS (no client certificate) and
reaches them over mTLS. The services' certificate names only an internal DNS
name, so the gateway (and the test's own clients) must use a server name
override, as behind an IP-list target. PostgreSQL and the inner-hop key are the
session stack's: the test's own calls to the services are signed with it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import UPSTREAM_TLS_PREFIX
from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2
from rag_cli.client import gateway_client
from rag_cli.settings import CliSettings
from rag_cli.stack import Stack, free_port
from services.common.registry import (
    EMBEDDER,
    GATEWAY,
    GATEWAY_UPSTREAMS,
    SERVICES,
    Service,
    upstream_target_variable,
)
from services.common.tls import ClientTls
from tests.conftest import sample_document
from tests.internal_calls import signing

# The only name in the services' certificate: no target can match it, so clients set it.
SERVICES_NAME = "services.rag.internal"
QUESTION = "When does the nightly base backup run?"
RUNBOOK = "postgres-backup-runbook.md"


# --- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _issue(
    subject: str,
    issuer: Issued | None,
    *,
    names: Sequence[x509.GeneralName] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> Issued:
    """A certificate for `subject`, signed by `issuer` (self-signed CA when None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return Issued(key, builder.sign(issuer.key if issuer else key, hashes.SHA256()))


def _write(issued: Issued, directory: Path, stem: str) -> tuple[Path, Path]:
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@dataclass(frozen=True)
class Pki:
    ca: Path
    gateway: tuple[Path, Path]  # localhost and 127.0.0.1
    services: tuple[Path, Path]  # SERVICES_NAME only
    client: tuple[Path, Path]  # for mTLS


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _issue("rag test CA", None)
    ca_file, _ = _write(ca, directory, "ca")
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    internal = [x509.DNSName(SERVICES_NAME)]
    return Pki(
        ca=ca_file,
        gateway=_write(_issue("gateway", ca, names=local, usage=server), directory, "gateway"),
        services=_write(_issue(SERVICES_NAME, ca, names=internal, usage=server), directory, "services"),
        client=_write(_issue("gateway client", ca, usage=client), directory, "client"),
    )


# --- processes ---------------------------------------------------------------------------------


def _tls_env(
    service: Service, cert_and_key: tuple[Path, Path], client_ca: Path | None = None
) -> dict[str, str]:
    prefix = service.env_prefix
    env = {f"{prefix}TLS_CERT_FILE": str(cert_and_key[0]), f"{prefix}TLS_KEY_FILE": str(cert_and_key[1])}
    if client_ca is not None:
        env[f"{prefix}TLS_CLIENT_CA_FILE"] = str(client_ca)
    return env


def _secure(target: str, tls: ClientTls) -> grpc.Channel:
    return grpc.secure_channel(target, tls.credentials(), options=tls.channel_options())


def wait_until_serving_tls(processes: Stack, name: str, tls: ClientTls, deadline: float) -> None:
    """Stack.wait_until_serving, over TLS: health checks share the service's (TLS-only) port."""
    process = processes.process(name)
    with _secure(processes.target(name), tls) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{processes.log_tail(name)}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                pass  # not listening, or the model still loading
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not become SERVING:\n{processes.log_tail(name)}")
            time.sleep(0.2)


@dataclass(frozen=True)
class TlsSystem:
    pki: Pki
    processes: Stack
    # The stack whose inner-hop key the services were given.
    session: Stack

    @property
    def services_mtls(self) -> ClientTls:
        cert, key = self.pki.client
        return ClientTls(self.pki.ca, cert, key, server_name=SERVICES_NAME)

    @property
    def gateway_tls(self) -> ClientTls:
        return ClientTls(self.pki.ca)


@pytest.fixture(scope="module")
def tls_system(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSystem]:
    directory = tmp_path_factory.mktemp("tls")
    pki = make_pki(directory / "pki")
    ports = {service.name: free_port() for service in SERVICES}
    processes = Stack(data_dir=directory, ports=ports, grace_period_s=1.0)
    processes.log_path("any").parent.mkdir(parents=True)
    system = TlsSystem(pki, processes, stack)
    base = stack.shared_environment()
    try:
        for service in GATEWAY_UPSTREAMS:
            env = {
                **base,
                **processes.listening_environment(service, ports[service.name]),
                **_tls_env(service, pki.services, pki.ca),
            }
            processes.start_service(service.name, service.module, env)
        processes.start_service(GATEWAY.name, GATEWAY.module, {**base, **_gateway_env(system)})
        deadline = time.monotonic() + 180
        for service in GATEWAY_UPSTREAMS:
            wait_until_serving_tls(processes, service.name, system.services_mtls, deadline)
        wait_until_serving_tls(processes, GATEWAY.name, system.gateway_tls, deadline)
        yield system
    finally:
        processes.stop()


def _gateway_env(system: TlsSystem) -> dict[str, str]:
    processes, pki = system.processes, system.pki
    return {
        **processes.listening_environment(GATEWAY, processes.ports[GATEWAY.name]),
        **{upstream_target_variable(u): processes.target(u.name) for u in GATEWAY_UPSTREAMS},
        **_tls_env(GATEWAY, pki.gateway),
        f"{UPSTREAM_TLS_PREFIX}CA_FILE": str(pki.ca),
        f"{UPSTREAM_TLS_PREFIX}CERT_FILE": str(pki.client[0]),
        f"{UPSTREAM_TLS_PREFIX}KEY_FILE": str(pki.client[1]),
        f"{UPSTREAM_TLS_PREFIX}SERVER_NAME": SERVICES_NAME,
    }


def _embed(channel: grpc.Channel) -> embedder_pb2.EmbedResponse:
    request = embedder_pb2.EmbedRequest(texts=["nightly backups"])
    response: embedder_pb2.EmbedResponse = embedder_pb2_grpc.EmbedderServiceStub(channel).Embed(
        request, timeout=10
    )
    return response


# --- tests -------------------------------------------------------------------------------------


def _secure_embedder(system: TlsSystem, tls: ClientTls) -> grpc.Channel:
    """A channel to the embedder over `tls`, its calls signed as the gateway's are."""
    return signing(_secure(system.processes.target(EMBEDDER.name), tls), system.session.signer(), EMBEDDER)


def test_mtls_service_answers_a_client_with_a_certificate(tls_system: TlsSystem) -> None:
    with _secure_embedder(tls_system, tls_system.services_mtls) as channel:
        assert len(_embed(channel).embeddings[0].values) == 384


def test_mtls_service_refuses_a_tls_client_without_a_certificate(tls_system: TlsSystem) -> None:
    no_cert = ClientTls(tls_system.pki.ca, server_name=SERVICES_NAME)
    with (
        _secure_embedder(tls_system, no_cert) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        _embed(channel)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_service_refuses_plaintext(tls_system: TlsSystem) -> None:
    for name in ("embedder", "gateway"):
        plaintext = grpc.insecure_channel(tls_system.processes.target(name))
        with plaintext as channel, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name


def _ingest_runbook(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str) -> None:
    gateway.IngestDocuments(
        gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[sample_document(RUNBOOK)]),
        timeout=60,
    )


def test_cli_channel_searches_over_tls_through_mtls_upstreams(
    tls_system: TlsSystem, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI's own client, configured as a user would: RAG_TLS_CA_FILE.
    monkeypatch.setenv("RAG_TLS_CA_FILE", str(tls_system.pki.ca))
    cli_tls = CliSettings().tls
    target = f"localhost:{tls_system.processes.ports['gateway']}"
    with gateway_client(target, cli_tls, None, 60) as gateway:
        gateway.ingest_documents(namespace, [sample_document(RUNBOOK)])
        reply = gateway.search(namespace, QUESTION, timeout_s=30)
    assert reply.hits, "the Search went gateway -> embedder -> retriever over mTLS"
    assert reply.hits[0].document_id == RUNBOOK


def test_ask_over_tls_reaches_every_upstream_over_mtls(tls_system: TlsSystem, namespace: str) -> None:
    # The generator requires a client certificate like the others: a cited answer
    # comes only from a Generate call that it took over mTLS.
    with _secure(f"localhost:{tls_system.processes.ports['gateway']}", tls_system.gateway_tls) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        _ingest_runbook(gateway, namespace)
        answer = gateway.Ask(
            gateway_pb2.AskRequest(namespace=namespace, question=QUESTION, skip_cache=True), timeout=60
        )
    assert answer.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    assert "02:00" in answer.answer
    assert [citation.document_id for citation in answer.citations] == [RUNBOOK] * len(answer.citations)
    assert answer.citations


def test_unreadable_certificate_fails_start_up_naming_the_setting(tmp_path: Path) -> None:
    processes = Stack(data_dir=tmp_path, ports={"generator": free_port()})
    processes.log_path("any").parent.mkdir(parents=True)
    missing = tmp_path / "missing.crt"
    env = {
        **os.environ,
        **processes.internal_auth_environment(),
        "GENERATOR_PORT": str(processes.ports["generator"]),
        "GENERATOR_TLS_CERT_FILE": str(missing),
        "GENERATOR_TLS_KEY_FILE": str(missing),
    }
    processes.start_service("generator", "services.generator", env)
    assert processes.process("generator").wait(timeout=60) != 0
    assert f"GENERATOR_TLS_KEY_FILE={missing}: cannot read" in processes.log_path("generator").read_text()
