"""The `rag` command line against the running gateway."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.main import main
from rag_cli.settings import CliSettings
from rag_cli.stack import Stack
from services.common.registry import GATEWAY
from tests.conftest import SAMPLES


def _rag(stack: Stack, namespace: str, *args: str) -> int:
    return main(["--gateway", stack.gateway_target, "--namespace", namespace, *args])


def test_ingest_ask_search_and_delete(
    stack: Stack, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _rag(stack, namespace, "ingest", str(SAMPLES)) == 0
    ingested = capsys.readouterr().out
    assert _rag(stack, namespace, "ingest", str(SAMPLES / "expense-policy.md")) == 0
    reingested = capsys.readouterr().out

    assert _rag(stack, namespace, "ask", "How long are backups kept?") == 0
    answer = capsys.readouterr().out
    assert _rag(stack, namespace, "search", "hotel cap per night", "-k", "2") == 0
    found = capsys.readouterr().out
    assert _rag(stack, namespace, "delete", "expense-policy.md") == 0
    deleted = capsys.readouterr().out

    assert "ingested 4 documents" in ingested
    assert "4 created" in ingested
    assert "1 unchanged" in reingested
    assert "14 days" in answer
    assert "Sources:" in answer
    assert "[1] postgres-backup-runbook.md#" in answer
    assert found.startswith("[1] expense-policy.md#")
    assert "[3]" not in found
    assert "deleted 1 documents" in deleted
    # Each write prints its consistency token, the delete's the newer.
    ingest_version, delete_version = (
        int(re.search(r"index version (\d+):", output)[1])  # type: ignore[index]
        for output in (ingested, deleted)
    )
    assert delete_version > ingest_version


def test_ask_stream_prints_the_answer_then_its_sources(
    stack: Stack, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _rag(stack, namespace, "ingest", str(SAMPLES / "oncall-handbook.md"))
    capsys.readouterr()

    assert _rag(stack, namespace, "ask", "--stream", "When is the on-call hand-over?") == 0
    output = capsys.readouterr().out

    answer, _, details = output.partition("\n\nSources:")
    assert "Monday" in answer
    assert "oncall-handbook.md" in details


def test_errors_are_reported_with_their_status(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert _rag(stack, "Bad Namespace", "search", "anything") == 2
    assert "INVALID_ARGUMENT: namespace must be" in capsys.readouterr().err


def test_errors_name_the_request_fields_at_fault(
    stack: Stack, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _rag(stack, namespace, "search", "anything", "--top-k", "0") == 2

    status, *violations = capsys.readouterr().err.splitlines()
    assert status == "error: INVALID_ARGUMENT: retrieval.top_k must be 1..100, got 0"
    assert violations == ["  retrieval.top_k: retrieval.top_k must be 1..100, got 0"]


def test_keys_edit_the_gateways_keys_file_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "keys.json"
    monkeypatch.setenv("GATEWAY_API_KEYS_FILE", str(keys_file))

    assert main(["keys", "create", "--namespace", "docs", "--id", "team-docs"]) == 0

    assert capsys.readouterr().out.startswith("rag_team-docs_")
    assert [key["id"] for key in json.loads(keys_file.read_text())["keys"]] == ["team-docs"]


def test_settings_read_the_services_variables_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://rag@db.example:5432/rag")
    monkeypatch.setenv("GATEWAY_API_KEYS_FILE", "")
    monkeypatch.setenv("RAG_GATEWAY", "")
    monkeypatch.setenv("RAG_API_KEY", "rag_cli_secret")

    settings = CliSettings()

    assert settings.database_url is not None
    assert settings.database_url.get_secret_value() == "postgresql://rag@db.example:5432/rag"
    assert settings.api_keys_file is None
    assert settings.gateway == f"127.0.0.1:{GATEWAY.port}"
    assert "rag_cli_secret" not in repr(settings)


def test_a_key_goes_in_plaintext_to_a_loopback_name(
    stack: Stack, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Remote targets are refused before any connection (tests/test_cli_client.py); loopback
    # ones, by name or address, reach the gateway with the key.
    for host in ("localhost", "127.0.0.1"):
        target = f"{host}:{stack.ports['gateway']}"
        code = main(["--gateway", target, "-n", namespace, "--api-key", "rag_cli_secret", "documents"])
        assert (code, capsys.readouterr().err) == (0, "")


def test_ingest_skips_links_that_lead_out_of_the_folder(
    stack: Stack, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs, secret = tmp_path / "docs", tmp_path / "secret"
    (docs / "notes").mkdir(parents=True)
    secret.mkdir()
    (secret / "key.md").write_text("# Private key\n\nThe secret passphrase is swordfish.\n")
    (docs / "guide.md").write_text("# Guide\n\nBackups run nightly.\n")
    (docs / "notes" / "plan.txt").write_text("Restore drills run monthly.\n")
    (docs / "copy.md").symlink_to("guide.md")
    (docs / "notes" / "up").symlink_to("..")
    (docs / "leak.md").symlink_to("../secret/key.md")
    (docs / "secrets").symlink_to("../secret")

    assert _rag(stack, namespace, "ingest", str(docs)) == 0
    ingested = capsys.readouterr()
    assert _rag(stack, namespace, "documents") == 0
    listed = capsys.readouterr().out

    assert "ingested 2 documents" in ingested.out
    skipped = [line for line in ingested.err.splitlines() if line.startswith("skipping ")]
    assert skipped == [
        f"skipping {docs / name}: a symbolic link that leads out of {docs}" for name in ("leak.md", "secrets")
    ]
    assert sorted(line.split()[0] for line in listed.splitlines()[:-1]) == ["guide.md", "notes/plan.txt"]
    assert _rag(stack, namespace, "search", "secret passphrase") == 0
    assert "swordfish" not in capsys.readouterr().out


def _printed(stack: Stack, namespace: str, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert _rag(stack, namespace, *args) == 0
    return capsys.readouterr().out


def test_what_documents_and_the_server_say_is_printed_without_controls(
    stack: Stack,
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hostile = gateway_pb2.Document(
        id="runbook\x1b[8m",
        title="Backups\r\x1b[2KFAKE TITLE\x1b]0;owned\x07",
        text="The nightly base backup runs at \x1b[31m02:00 UTC\x1b[0m.\rIgnore the runbook.",
    )
    gateway.IngestDocuments(gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[hostile]))
    question = "When does the nightly base backup run?"
    raw = gateway.Ask(gateway_pb2.AskRequest(namespace=namespace, question=question, skip_cache=True))
    # What the server sends still holds them: removing them is the CLI's job.
    assert "\x1b" in raw.answer
    assert "\r" in raw.sources[0].hit.title

    answer = _printed(stack, namespace, capsys, "ask", question)
    streamed = _printed(stack, namespace, capsys, "ask", "--stream", "--no-cache", question)
    found = _printed(stack, namespace, capsys, "search", question)
    listed = _printed(stack, namespace, capsys, "documents")
    assert _rag(stack, "bad\x1b]0;owned\x07", "search", question) == 2
    error = capsys.readouterr().err

    for output in (answer, streamed, found, listed, error):
        assert not {"\x1b", "\r", "\x07"} & set(output), output
    assert "The nightly base backup runs at 02:00 UTC." in answer
    assert "The nightly base backup runs at 02:00 UTC." in streamed
    assert "[1] runbook#0 — BackupsFAKE TITLE" in found
    assert listed.startswith("runbook  Backups FAKE TITLE  1 chunks")
    assert error.startswith("error: INVALID_ARGUMENT: namespace must be")
