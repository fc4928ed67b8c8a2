"""The client's copy of the generated code (clients/python/gen/rag) is the repository's, file for file.

gen/python must match protos/ (scripts/generate_protos.py --check) and the copy
must match gen/python (clients/python/sync_stubs.py --check), so together the
copy matches protos/. And the distribution's version floors are those the
generated code demands, or an install could pick a runtime that refuses it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.clients.conftest import CLIENT_ROOT
from tests.conftest import REPO_ROOT

SYNC_STUBS = CLIENT_ROOT / "sync_stubs.py"
COPY = CLIENT_ROOT / "gen"
GATEWAY_MODULES = COPY / "rag" / "gateway" / "v1"


def check(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SYNC_STUBS), "--check", "--target", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_generated_code_matches_the_protos() -> None:
    generate = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "generate_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generate.returncode == 0, generate.stderr


def test_the_clients_copy_matches_the_generated_code() -> None:
    result = check(COPY)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "gen"
    shutil.copytree(COPY / "rag", target / "rag", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_a_changed_file_is_stale(copy: Path) -> None:
    changed = copy / "rag" / "common" / "v1" / "common_pb2.pyi"
    changed.write_text(changed.read_text() + "\n")
    result = check(copy)
    assert result.returncode != 0
    assert result.stderr.splitlines()[1:] == ["rag/common/v1/common_pb2.pyi"]


def test_a_missing_or_extra_file_is_stale(copy: Path) -> None:
    (copy / "rag" / "gateway" / "v1" / "gateway_pb2_grpc.py").unlink()
    (copy / "rag" / "gateway" / "v1" / "stray_pb2.py").write_text("")
    result = check(copy)
    assert result.returncode != 0
    assert result.stderr.splitlines()[1:] == [
        "rag/gateway/v1/gateway_pb2_grpc.py",
        "rag/gateway/v1/stray_pb2.py",
    ]


def test_sync_writes_exactly_the_contracts_files(tmp_path: Path) -> None:
    target = tmp_path / "gen"
    subprocess.run([sys.executable, str(SYNC_STUBS), "--target", str(target)], check=True, timeout=120)
    assert check(target).returncode == 0
    written = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    # The gateway's contract and what it imports, never another service's stubs.
    assert "rag/gateway/v1/gateway_pb2_grpc.py" in written
    assert "rag/retriever/v1/retriever_pb2.py" in written
    assert not [name for name in written if "embedder" in name or name.endswith("retriever_pb2_grpc.py")]


def _floors() -> dict[str, str]:
    project = tomllib.loads((CLIENT_ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        found = re.fullmatch(r"([A-Za-z0-9_-]+)>=([0-9.]+),<[0-9.]+", requirement)
        assert found, f"expected name>=floor,<ceiling, got {requirement!r}"
        floors[found[1]] = found[2]
    return floors


def test_version_floors_are_those_the_generated_code_needs() -> None:
    pb2 = (GATEWAY_MODULES / "gateway_pb2.py").read_text()
    grpc_module = (GATEWAY_MODULES / "gateway_pb2_grpc.py").read_text()
    protobuf_made_with = re.search(r"^# Protobuf Python Version: ([0-9.]+)$", pb2, re.MULTILINE)
    grpc_made_with = re.search(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'$", grpc_module, re.MULTILINE)
    assert protobuf_made_with
    assert grpc_made_with

    floors = _floors()
    assert floors["protobuf"] == protobuf_made_with[1]
    assert floors["grpcio"] == grpc_made_with[1]
