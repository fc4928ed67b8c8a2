"""The `rag` command line against the running gateway."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
