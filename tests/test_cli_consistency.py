"""The record of write tokens behind `--after-ingest` (rag_cli/consistency.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rag_cli import consistency
from rag_cli.main import main


def test_the_last_write_of_each_gateway_and_namespace_is_kept_apart(tmp_path: Path) -> None:
    consistency.record(tmp_path, "gw-a:50051", "docs", 7)
    consistency.record(tmp_path, "gw-a:50051", "other", 3)
    consistency.record(tmp_path, "gw-b:50051", "docs", 40)
    consistency.record(tmp_path, "gw-a:50051", "docs", 9)

    assert consistency.recorded(tmp_path, "gw-a:50051", "docs") == 9
    assert consistency.recorded(tmp_path, "gw-a:50051", "other") == 3
    assert consistency.recorded(tmp_path, "gw-b:50051", "docs") == 40
    assert [p.name for p in tmp_path.iterdir()] == [consistency.FILE_NAME]  # no temporary file left


def test_the_version_sent_is_the_number_given_else_the_record_when_asked(tmp_path: Path) -> None:
    consistency.record(tmp_path, "gw", "docs", 12)

    assert consistency.min_index_version(False, None, tmp_path, "gw", "docs") is None
    assert consistency.min_index_version(True, None, tmp_path, "gw", "docs") == 12
    assert consistency.min_index_version(False, 5, tmp_path, "gw", "docs") == 5


def test_no_record_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run `rag ingest` first") as raised:
        consistency.recorded(tmp_path, "gw", "docs")
    assert "'docs'" in str(raised.value)


def test_a_damaged_record_is_named(tmp_path: Path) -> None:
    (tmp_path / consistency.FILE_NAME).write_text("[1, 2")

    with pytest.raises(ValueError, match="cannot read the recorded index versions"):
        consistency.recorded(tmp_path, "gw", "docs")


@pytest.mark.parametrize("text", ["-1", "-20", "latest"])
def test_a_negative_token_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="an integer, 0 or more"):
        consistency.parse_token(text)


def test_search_after_ingest_with_nothing_recorded_fails_before_calling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAG_STATE_DIR", str(tmp_path))
    # Nothing listens on port 1: the error must come before any call.
    code = main(["--gateway", "127.0.0.1:1", "-n", "docs", "search", "anything", "--after-ingest"])

    assert code == 2
    assert "run `rag ingest` first" in capsys.readouterr().err
