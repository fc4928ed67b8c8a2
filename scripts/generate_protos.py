"""Regenerate the Python code for protos/ into gen/python (committed).

Run after changing a .proto: `python scripts/generate_protos.py`. CI runs it
with `--check`, which fails when the committed code differs from a fresh run.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

# grpcio-tools ships neither type hints nor stubs; protoc.main is the one call made.
from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUTPUT_ROOT = ROOT / "gen" / "python"


def generate(output: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    # mypy-protobuf's plugins are installed beside this interpreter; protoc would
    # otherwise look for them on PATH, which need not hold the virtualenv.
    scripts = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output}",
        f"--grpc_python_out={output}",
        f"--mypy_out={output}",
        f"--mypy_grpc_out={output}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes modules, not packages: give every folder an __init__.py so
    # `rag.gateway.v1` imports as a regular package, and mark it typed.
    for folder in [output / "rag", *(p for p in (output / "rag").rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    (output / "rag" / "py.typed").touch()


def differences(left: Path, right: Path) -> list[str]:
    comparison = filecmp.dircmp(left, right)
    found = [
        str(left / name) for name in comparison.left_only + comparison.right_only + comparison.diff_files
    ]
    for sub in comparison.common_dirs:
        found += differences(left / sub, right / sub)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        generate(fresh)
        if check:
            stale = (
                differences(OUTPUT_ROOT / "rag", fresh / "rag") if OUTPUT_ROOT.exists() else ["gen/python"]
            )
            if stale:
                sys.exit("generated code is stale; run scripts/generate_protos.py:\n" + "\n".join(stale))
            return
        shutil.rmtree(OUTPUT_ROOT / "rag", ignore_errors=True)
        OUTPUT_ROOT.mkdir(parents=True, exist_ok=True)
        shutil.copytree(fresh / "rag", OUTPUT_ROOT / "rag")


if __name__ == "__main__":
    main()
