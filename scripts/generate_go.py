"""Regenerate the Go code for protos/ into clients/go/gen (committed).

Run after changing a .proto: `python scripts/generate_go.py`. CI runs it with
`--check`, which fails when the committed code differs from a fresh run, as
scripts/generate_protos.py does for the Python code.

Python rather than a shell script, so that the Go code comes from the same protoc
as the Python code: grpcio-tools' (pinned in pyproject.toml, with the well-known
types beside it), whose version protoc-gen-go writes into every file. The two Go
plugins, protoc-gen-go and protoc-gen-go-grpc, are found on PATH (Debian:
`apt-get install protoc-gen-go protoc-gen-go-grpc`).

The .proto files set no go_package: each language's import paths are its own
business (README "Clients in other languages"). The Go ones are given here, as
protoc's M mappings: rag/gateway/v1/gateway.proto becomes the package gatewayv1
imported as ragplatform/clients/go/gen/rag/gateway/v1, a GOPATH-mode path
(clients/go/README.md). The well-known types carry their own go_package.
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
OUTPUT_ROOT = ROOT / "clients" / "go" / "gen"
# Where OUTPUT_ROOT sits in a GOPATH: $GOPATH/src/ragplatform/clients/go/gen.
GO_IMPORT_ROOT = "ragplatform/clients/go/gen"
PLUGINS = ("protoc-gen-go", "protoc-gen-go-grpc")


def go_package(proto: str) -> str:
    """The import path and package name of a .proto's Go code: rag/gateway/v1/x.proto -> .../v1;gatewayv1."""
    folder = Path(proto).parent
    return f"{GO_IMPORT_ROOT}/{folder.as_posix()};{''.join(folder.parts[-2:])}"


def plugin_paths() -> dict[str, str]:
    found = {name: shutil.which(name) for name in PLUGINS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not on PATH: apt-get install {' '.join(PLUGINS)}")
    return {name: path for name, path in found.items() if path is not None}


def generate(output: Path) -> None:
    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    well_known = resources.files("grpc_tools") / "_proto"
    mappings = [f"M{proto}={go_package(proto)}" for proto in protos]
    args = [
        "protoc",
        *(f"--plugin={name}={path}" for name, path in plugin_paths().items()),
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--go_out={output}",
        f"--go-grpc_out={output}",
        "--go_opt=paths=source_relative",
        "--go-grpc_opt=paths=source_relative",
        *(f"--go_opt={mapping}" for mapping in mappings),
        *(f"--go-grpc_opt={mapping}" for mapping in mappings),
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def differences(committed: Path, fresh: Path) -> list[str]:
    """Files that are only on one side or differ, relative to the two roots."""
    old = {p.relative_to(committed) for p in committed.rglob("*") if p.is_file()}
    new = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
    changed = {name for name in old & new if not filecmp.cmp(committed / name, fresh / name, shallow=False)}
    return sorted(str(name) for name in (old ^ new) | changed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT_ROOT, help="default: %(default)s")
    arguments = parser.parse_args()
    output: Path = arguments.output
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch)
        generate(fresh)
        if arguments.check:
            stale = differences(output, fresh) if output.is_dir() else [str(output)]
            if stale:
                sys.exit("generated Go code is stale; run scripts/generate_go.py:\n" + "\n".join(stale))
            return
        shutil.rmtree(output, ignore_errors=True)
        shutil.copytree(fresh, output)


if __name__ == "__main__":
    main()
