"""clients/python installs on its own: in a fresh virtualenv it brings grpcio, protobuf and grpcio-status,
none of the platform (no torch, no services), and still talks to the gateway.

pip installs from a copy of the folder, so the build leaves nothing in the
checkout and cannot reach files outside the distribution's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rag_cli.stack import Stack
from tests.clients.conftest import CLIENT_ROOT
from tests.conftest import SAMPLES

RUNBOOK = "postgres-backup-runbook.md"
# What an install may bring: the client, its three dependencies and theirs.
ALLOWED_DISTRIBUTIONS = {
    "rag-platform-client",
    "grpcio",
    "grpcio-status",
    "protobuf",
    "googleapis-common-protos",
    "typing-extensions",
    "pip",
}
MUST_NOT_IMPORT = ["torch", "services", "gateway", "rag_cli", "sentence_transformers", "numpy"]
INSTALL_TIMEOUT_S = 900

# Run by the virtualenv's python: a user's script, sync and asyncio.
USER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from rag_client import AsyncRagClient, RagClient, text_document

    target, namespace, sample = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    question = "When does the nightly base backup run?"
    with RagClient(target) as client:
        client.ingest_documents(namespace, [text_document(sample.name, sample.read_text())])
        answer = client.ask(namespace, question)

    async def stream():
        async with AsyncRagClient(target) as client:
            return [event async for event in client.ask_stream(namespace, question, skip_cache=True)]

    final = asyncio.run(stream())[-1].final
    print(json.dumps({
        "answer": answer.answer,
        "cited": sorted({c.document_id for c in answer.citations}),
        "streamed": final.answer,
    }))
    """
)

IMPORT_PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    found = {}
    for name in sys.argv[1:]:
        try:
            importlib.import_module(name)
            found[name] = True
        except ImportError:
            found[name] = False
    print(json.dumps(found))
    """
)


@dataclass(frozen=True)
class Venv:
    python: Path
    folder: Path  # the working directory of every run: nothing of the checkout is on its path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), *args],
            cwd=self.folder,
            env=_clean_environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _clean_environment() -> dict[str, str]:
    """This process's environment without what would point another python at the checkout or .venv."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PYTHON") and name != "VIRTUAL_ENV"
    }


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    folder = tmp_path_factory.mktemp("client-venv")
    source = folder / "rag-platform-client"
    shutil.copytree(
        CLIENT_ROOT, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    )
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True, timeout=300)
    python = folder / "venv" / "bin" / "python"
    started = time.monotonic()
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", str(source)],
        cwd=folder,
        env=_clean_environment(),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    print(f"pip install clients/python into a fresh virtualenv took {time.monotonic() - started:.1f} s")
    return Venv(python, folder)


def test_only_the_client_and_its_grpc_dependencies_are_installed(venv: Venv) -> None:
    listed = venv.run("-m", "pip", "list", "--format=json", "--disable-pip-version-check")
    assert listed.returncode == 0, listed.stderr
    installed = {entry["name"].lower().replace("_", "-") for entry in json.loads(listed.stdout)}
    assert {"rag-platform-client", "grpcio", "grpcio-status", "protobuf"} <= installed
    assert installed <= ALLOWED_DISTRIBUTIONS | {"setuptools"}


def test_rag_client_imports_and_the_platform_does_not(venv: Venv) -> None:
    probe = venv.run("-c", IMPORT_PROBE, "rag_client", "rag.gateway.v1.gateway_pb2_grpc", *MUST_NOT_IMPORT)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found == {
        "rag_client": True,
        "rag.gateway.v1.gateway_pb2_grpc": True,
        **dict.fromkeys(MUST_NOT_IMPORT, False),
    }


def test_a_script_in_the_virtualenv_asks_the_gateway(venv: Venv, stack: Stack, namespace: str) -> None:
    script = venv.folder / "ask.py"
    script.write_text(USER_SCRIPT)
    result = venv.run(str(script), stack.gateway_target, namespace, str(SAMPLES / RUNBOOK))
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert "02:00 UTC" in reply["answer"]
    assert reply["cited"] == [RUNBOOK]
    assert "02:00 UTC" in reply["streamed"]
