"""The Go client's tree: generated code as a fresh run makes it, hand-written code gofmt- and vet-clean,
its unit tests passing.

The Go code builds in GOPATH mode, offline, against the grpc-go and protobuf-go
sources Debian installs under /usr/share/gocode (clients/go/README.md);
go_environment() is that setup, for tests/e2e/test_go_client.py too. It copies
clients/go into a GOPATH of the test's own: go's package patterns (./..., x/...)
do not follow a symbolic link.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

GO_CLIENT = REPO_ROOT / "clients" / "go"
GENERATOR = REPO_ROOT / "scripts" / "generate_go.py"
# Where $GOPATH/src puts clients/go: the import path root of scripts/generate_go.py.
IMPORT_PATH = "ragplatform/clients/go"
# Debian's golang-google-grpc-dev and golang-google-protobuf-dev install their sources here.
DEBIAN_GOCODE = Path("/usr/share/gocode")


def go_environment(gopath: Path) -> dict[str, str]:
    """The environment of a go command that sees clients/go as IMPORT_PATH inside `gopath`.

    clients/go is copied into gopath/src, the rest of the GOPATH is Debian's; GOFLAGS
    is cleared so that no -mod=... of the caller's asks for a module download.
    """
    if shutil.which("go") is None:
        pytest.fail("the Go client's tests need go on PATH: apt-get install golang-go (clients/go/README.md)")
    copy = gopath / "src" / IMPORT_PATH
    if not copy.exists():
        shutil.copytree(GO_CLIENT, copy)
    return {**os.environ, "GO111MODULE": "off", "GOPATH": f"{gopath}:{DEBIAN_GOCODE}", "GOFLAGS": ""}


def run_go(arguments: list[str], gopath: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["go", *arguments],
        cwd=gopath,
        env=go_environment(gopath),
        capture_output=True,
        text=True,
        timeout=900,
    )


def generator(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *arguments], capture_output=True, text=True, timeout=120
    )


def test_committed_go_code_is_what_the_protos_generate() -> None:
    check = generator("--check")
    assert check.returncode == 0, check.stderr


def test_the_check_names_every_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "gen"
    shutil.copytree(GO_CLIENT / "gen", stale)
    gateway = stale / "rag" / "gateway" / "v1" / "gateway.pb.go"
    gateway.write_text(gateway.read_text().replace("AskRequest", "AskRequestRenamed"))
    (stale / "rag" / "common" / "v1" / "common.pb.go").unlink()
    (stale / "rag" / "left_over.pb.go").write_text("package rag\n")

    check = generator("--check", f"--output={stale}")

    assert check.returncode != 0
    assert "stale" in check.stderr
    for name in ("gateway/v1/gateway.pb.go", "common/v1/common.pb.go", "left_over.pb.go"):
        assert name in check.stderr
    assert "retriever" not in check.stderr


def test_go_code_is_formatted_vetted_and_passes_its_unit_tests(tmp_path: Path) -> None:
    gofmt = subprocess.run(["gofmt", "-l", "."], cwd=GO_CLIENT, capture_output=True, text=True, timeout=120)
    assert gofmt.returncode == 0, gofmt.stderr
    assert gofmt.stdout == "", f"not gofmt-formatted:\n{gofmt.stdout}"

    vet = run_go(["vet", f"{IMPORT_PATH}/..."], tmp_path)
    assert vet.returncode == 0, vet.stderr

    unit_tests = run_go(["test", f"{IMPORT_PATH}/..."], tmp_path)
    assert unit_tests.returncode == 0, unit_tests.stdout + unit_tests.stderr
    assert f"ok  \t{IMPORT_PATH}/rag" in unit_tests.stdout
    assert f"ok  \t{IMPORT_PATH}/cmd/ragask" in unit_tests.stdout
