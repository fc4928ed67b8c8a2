"""The CLI sends an API key in plaintext only to a target on this machine, and names its own settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_cli.client import gateway_client
from rag_cli.main import main
from rag_cli.settings import TLS_CA_FILE_VARIABLE
from rag_client import PlaintextKeyRefused, Tls
from rag_client.targets import is_loopback_target
from tests.e2e.test_tls import make_pki

KEY = "rag_team-a_not-a-real-secret"
TIMEOUT_S = 5.0
LOOPBACK_TARGETS = [
    "127.0.0.1:50050",
    "127.8.9.10:50050",
    "localhost:50050",
    "LOCALHOST",
    "[::1]:50050",
    "::1",
    "[::ffff:127.0.0.1]:50050",
    "dns:///localhost:50050",
    "dns:localhost:50050",
    "ipv4:127.0.0.1:50050,127.0.0.2:50051",
    "ipv6:[::1]:50050",
    "unix:/run/rag/gateway.sock",
    "unix:///run/rag/gateway.sock",
    "unix-abstract:rag-gateway",
]
REMOTE_TARGETS = [
    "10.0.0.5:50050",
    "192.168.1.20",
    "rag.example.com:50050",
    "localhost.example.com:50050",
    "[2001:db8::1]:50050",
    "0.0.0.0:50050",
    "dns:///rag.example.com:50050",
    # A DNS server of the caller's choice could answer "localhost" with anything.
    "dns://8.8.8.8/localhost:50050",
    "ipv4:127.0.0.1:50050,10.0.0.5:50050",
    "ipv6:[::1]:50050,[2001:db8::1]:50050",
    "xds:///rag-gateway",
]


@pytest.mark.parametrize("target", LOOPBACK_TARGETS)
def test_loopback_targets(target: str) -> None:
    assert is_loopback_target(target)


@pytest.mark.parametrize("target", REMOTE_TARGETS)
def test_remote_targets(target: str) -> None:
    assert not is_loopback_target(target)


@pytest.mark.parametrize("target", REMOTE_TARGETS)
def test_a_key_is_not_sent_in_plaintext_to_another_machine(target: str) -> None:
    with pytest.raises(PlaintextKeyRefused, match=TLS_CA_FILE_VARIABLE):
        gateway_client(target, None, KEY, TIMEOUT_S)


def test_a_key_goes_in_plaintext_to_loopback_and_over_tls_anywhere(tmp_path: Path) -> None:
    tls = Tls(make_pki(tmp_path).ca)

    with gateway_client("localhost:50050", None, KEY, TIMEOUT_S) as plaintext_local:
        assert plaintext_local is not None
    with gateway_client("rag.example.com:50050", tls, KEY, TIMEOUT_S) as tls_remote:
        assert tls_remote is not None
    with gateway_client("rag.example.com:50050", None, None, TIMEOUT_S) as plaintext_remote_without_key:
        assert plaintext_remote_without_key is not None


def test_the_command_names_what_to_set_and_never_shows_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TLS_CA_FILE_VARIABLE, raising=False)

    code = main(["--gateway", "rag.example.com:50050", "--api-key", KEY, "search", "anything"])

    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: refusing to send the API key in plaintext to rag.example.com:50050")
    assert f"set {TLS_CA_FILE_VARIABLE}" in error
    assert KEY not in error


@pytest.mark.parametrize(
    ("variables", "said"),
    [
        ({"RAG_TLS_CA_FILE": "{missing}"}, "error: RAG_TLS_CA_FILE={missing}: cannot read"),
        ({"RAG_TLS_CA_FILE": "{not_pem}"}, "error: RAG_TLS_CA_FILE={not_pem}: not a PEM file"),
        (
            {"RAG_TLS_CA_FILE": "{ca}", "RAG_TLS_CERT_FILE": "{ca}"},
            "error: set both RAG_TLS_CERT_FILE and RAG_TLS_KEY_FILE, or neither",
        ),
    ],
)
def test_a_tls_setting_that_cannot_work_is_named_by_its_variable(
    variables: dict[str, str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = {"missing": tmp_path / "missing.crt", "not_pem": tmp_path / "ca.txt", "ca": make_pki(tmp_path).ca}
    files["not_pem"].write_text("not a certificate")
    for name in ("RAG_TLS_CERT_FILE", "RAG_TLS_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(**files))

    code = main(["--gateway", "rag.example.com:50050", "search", "anything"])

    assert code == 2
    assert capsys.readouterr().err.startswith(said.format(**files))
