"""A Node.js client, its stubs built at run time from the same protos/, asks through the gateway."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rag_cli.stack import Stack
from tests.conftest import REPO_ROOT, SAMPLES

NODE_CLIENT = REPO_ROOT / "clients" / "node"


@pytest.fixture(scope="module")
def ask_js() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("the Node.js client test needs node and npm on PATH")
    installed = NODE_CLIENT / "node_modules" / ".package-lock.json"
    lockfile = NODE_CLIENT / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lockfile.stat().st_mtime:
        npm = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert npm.returncode == 0, npm.stderr
    return NODE_CLIENT / "ask.js"


def test_node_client_ingests_then_asks_and_streams_with_cited_sources(
    ask_js: Path, stack: Stack, namespace: str
) -> None:
    result = subprocess.run(
        [
            "node",
            str(ask_js),
            f"--gateway={stack.gateway_target}",
            f"--namespace={namespace}",
            "--question=When does the nightly base backup run?",
            str(SAMPLES / "postgres-backup-runbook.md"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "ingested postgres-backup-runbook.md: UPSERT_STATUS_CREATED" in result.stdout
    unary, streamed = result.stdout.split("\nAskStream:\n")
    for output in (unary, streamed):
        assert "02:00 UTC" in output
        assert "ANSWER_OUTCOME_ANSWERED" in output
        assert re.search(r"^  \[\d+\] postgres-backup-runbook\.md #\d+ .* cited$", output, re.MULTILINE)
