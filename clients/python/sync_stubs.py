"""Copies the gateway contract's generated code from gen/python into this distribution's gen/.

The client ships the very modules the services use, under the same names
(`rag.gateway.v1.gateway_pb2`, ...), rather than code generated a second way:
protobuf registers each .proto file once per process, so two builds of one
contract under different module names could not be imported side by side (the
`rag` CLI will import both this client and the services' shared code).

Which modules: gateway.proto and every rag/ .proto it imports, transitively
(message modules and their .pyi stubs), the gateway's service stubs, and the
package files around them. They go to clients/python/gen/, beside src/ rather
than in it, so that src/ holds rag_client alone and the main package can take
rag_client from there without a second, partial `rag` package in its way.

Run after scripts/generate_protos.py (`make protos` runs both); `--check`
fails, naming the files, when the copy is stale.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
from pathlib import Path

CLIENT_ROOT = Path(__file__).resolve().parent
REPO_ROOT = CLIENT_ROOT.parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
GENERATED_ROOT = REPO_ROOT / "gen" / "python"
DEFAULT_TARGET = CLIENT_ROOT / "gen"
# The contract the client speaks; its service stubs are copied too, not only its messages.
SERVICE_PROTO = "rag/gateway/v1/gateway.proto"
PACKAGE = "rag"
_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


def contract_protos(proto_root: Path = PROTO_ROOT) -> list[str]:
    """SERVICE_PROTO and the rag/ .proto files it imports, transitively, sorted.

    Well-known types (google/protobuf/...) come with the protobuf package, so
    they are not followed.
    """
    found: set[str] = set()
    pending = [SERVICE_PROTO]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        text = (proto_root / name).read_text(encoding="utf-8")
        pending += [imported for imported in _IMPORT.findall(text) if imported.startswith(f"{PACKAGE}/")]
    return sorted(found)


def stub_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """The files the client ships, as paths below gen/python."""
    files = {f"{PACKAGE}/__init__.py", f"{PACKAGE}/py.typed"}
    for proto in contract_protos(proto_root):
        module = proto.removesuffix(".proto")
        files |= {f"{module}_pb2.py", f"{module}_pb2.pyi"}
        if proto == SERVICE_PROTO:
            files |= {f"{module}_pb2_grpc.py", f"{module}_pb2_grpc.pyi"}
        # Every folder on the way down is a regular package.
        folder = Path(proto).parent
        while folder != Path("."):
            files.add(f"{folder.as_posix()}/__init__.py")
            folder = folder.parent
    return sorted(files)


def stale_files(target: Path = DEFAULT_TARGET, source: Path = GENERATED_ROOT) -> list[str]:
    """Files of the copy under target/rag that are missing, extra or different from source; [] when fresh."""
    expected = set(stub_files())
    present = {p.relative_to(target).as_posix() for p in (target / PACKAGE).rglob("*") if _shipped(p)}
    stale = sorted((expected - present) | (present - expected))
    for name in sorted(expected & present):
        if not (source / name).is_file() or not filecmp.cmp(source / name, target / name, shallow=False):
            stale.append(name)
    return sorted(stale)


def _shipped(path: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.parts


def sync(target: Path = DEFAULT_TARGET, source: Path = GENERATED_ROOT) -> None:
    """Replaces target/rag with a fresh copy of the contract's files from source."""
    shutil.rmtree(target / PACKAGE, ignore_errors=True)
    for name in stub_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the copy differs from gen/python")
    parser.add_argument(
        "--target", type=Path, default=DEFAULT_TARGET, help="the folder that holds the copied rag package"
    )
    args = parser.parse_args()
    if not args.check:
        sync(args.target)
        return
    if stale := stale_files(args.target):
        sys.exit(
            "the client's copy of the generated code is stale; run clients/python/sync_stubs.py:\n"
            + "\n".join(stale)
        )


if __name__ == "__main__":
    main()
