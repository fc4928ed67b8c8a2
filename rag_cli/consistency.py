"""Read-your-writes across commands: the index version a write returned, kept for the next command.

A write's response carries the namespace's index version once it committed
(the gateway proto's consistency token). `rag ingest` and `rag delete` print it
and record it here, per gateway and namespace; `rag search` and `rag ask`
given `--after-ingest` send it back as RetrievalOptions.min_index_version, so
they read data at least that recent even when the retriever reads from a
replica that has not replayed the write yet. `--min-index-version N` sends N
instead, for a token carried by other means. (`rag eval` searches after its own
ingest with that ingest's token, rag_cli/eval.py.)

The record is a small JSON file in RAG_STATE_DIR (default
$XDG_STATE_HOME/rag, else ~/.local/state/rag), replaced whole on each write so
that a reader never sees half of one. It holds only version numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

FILE_NAME = "index-versions.json"


def default_state_dir() -> Path:
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "rag"


def _key(gateway: str, namespace: str) -> str:
    return f"{gateway} {namespace}"


def _read(path: Path) -> dict[str, int]:
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the recorded index versions ({error}); delete it") from None
    if not isinstance(recorded, dict):
        raise ValueError(f"{path}: expected a JSON object of index versions; delete it")
    return {key: value for key, value in recorded.items() if isinstance(value, int)}


def record(state_dir: Path, gateway: str, namespace: str, index_version: int) -> None:
    """Keeps index_version as the last write's token for (gateway, namespace)."""
    path = state_dir / FILE_NAME
    state_dir.mkdir(parents=True, exist_ok=True)
    versions = _read(path)
    versions[_key(gateway, namespace)] = index_version
    with tempfile.NamedTemporaryFile("w", dir=state_dir, delete=False, encoding="utf-8") as file:
        json.dump(versions, file, indent=1, sort_keys=True)
    os.replace(file.name, path)


def recorded(state_dir: Path, gateway: str, namespace: str) -> int:
    """The token the last `rag ingest` or `rag delete` of (gateway, namespace) recorded.

    Raises ValueError when there is none, saying how to get one.
    """
    version = _read(state_dir / FILE_NAME).get(_key(gateway, namespace))
    if version is None:
        raise ValueError(
            f"--after-ingest: no ingest or delete into {namespace!r} through {gateway} is recorded in"
            f" {state_dir / FILE_NAME}; run `rag ingest` first, or pass the index version it printed"
        )
    return version


def min_index_version(
    after_ingest: bool, given: int | None, state_dir: Path, gateway: str, namespace: str
) -> int | None:
    """What to send as min_index_version: the number given, else the recorded token when after_ingest,
    else None (any version)."""
    if given is not None:
        return given
    return recorded(state_dir, gateway, namespace) if after_ingest else None


def parse_token(text: str) -> int:
    """argparse type of --min-index-version: an index version, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an index version (an integer, 0 or more), got {text!r}")
    return value
