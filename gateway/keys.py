"""API keys: how they look, how they are stored (hashed, in a JSON file) and looked up.

A key reads "rag_<id>_<secret>": the id (no '_' in it) finds the entry in O(1),
the secret is 32 random bytes, URL-safe base64. The file holds only the key's
SHA-256, so a leaked file (or a Kubernetes Secret read by the wrong pod) gives
no working key. Plain SHA-256 is enough here: the secret has 256 bits of
entropy, so there is nothing to guess that salting or stretching would slow down.

File (GATEWAY_API_KEYS_FILE):
    {"keys": [{"id": "team-a", "sha256": "<hex>", "namespaces": ["a", "b"],
               "created_at": "2026-01-01T00:00:00+00:00", "revoked": false}]}
"namespaces": ["*"] grants every namespace.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.validation import NAMESPACE_PATTERN, NAMESPACE_RULE

log = logging.getLogger(__name__)

KEY_PREFIX = "rag_"
ALL_NAMESPACES = "*"
# No '_' in ids: the first '_' after the prefix ends the id, the secret may hold any.
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_SECRET_BYTES = 32


@dataclass(frozen=True)
class KeyEntry:
    id: str
    sha256: str
    namespaces: tuple[str, ...]
    created_at: str
    revoked: bool = False

    def allows(self, namespace: str) -> bool:
        return ALL_NAMESPACES in self.namespaces or namespace in self.namespaces

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "namespaces": list(self.namespaces)}

    @staticmethod
    def from_json(raw: dict[str, Any]) -> KeyEntry:
        entry = KeyEntry(
            id=str(raw["id"]),
            sha256=str(raw["sha256"]),
            namespaces=tuple(str(n) for n in raw["namespaces"]),
            created_at=str(raw.get("created_at", "")),
            revoked=bool(raw.get("revoked", False)),
        )
        check_id(entry.id)
        check_namespaces(entry.namespaces)
        return entry


def check_id(key_id: str) -> str:
    if not ID_PATTERN.fullmatch(key_id):
        raise ValueError(
            f"key id must be lower-case letters, digits and '-', 1..63 characters; got {key_id!r}"
        )
    return key_id


def check_namespaces(namespaces: tuple[str, ...]) -> tuple[str, ...]:
    if not namespaces:
        raise ValueError("a key needs at least one namespace (or '*' for all)")
    for namespace in namespaces:
        if namespace != ALL_NAMESPACES and not NAMESPACE_PATTERN.fullmatch(namespace):
            raise ValueError(f"namespace must be {NAMESPACE_RULE} (or '*'); got {namespace!r}")
    return namespaces


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key; None for anything else."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, separator, secret = key[len(KEY_PREFIX) :].partition("_")
    if not separator or not secret or not ID_PATTERN.fullmatch(key_id):
        return None
    return key_id


def new_key(key_id: str, namespaces: tuple[str, ...]) -> tuple[str, KeyEntry]:
    """A fresh key (shown once, never stored) and its entry for the file."""
    check_id(key_id)
    check_namespaces(namespaces)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).decode().rstrip("=")
    key = f"{KEY_PREFIX}{key_id}_{secret}"
    created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return key, KeyEntry(key_id, hash_key(key), namespaces, created)


def read_keys(path: Path) -> dict[str, KeyEntry]:
    """The file's entries by id; a missing file holds none (so `create` can start one)."""
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    entries = [KeyEntry.from_json(item) for item in raw.get("keys", [])]
    return {entry.id: entry for entry in entries}


def write_keys(path: Path, entries: dict[str, KeyEntry]) -> None:
    """Replaces the file atomically, so a gateway reloading it never reads half a file."""
    text = json.dumps({"keys": [e.to_json() for e in entries.values()]}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def create_key(path: Path, namespaces: tuple[str, ...], key_id: str | None = None) -> str:
    entries = read_keys(path)
    key_id = key_id or f"key-{secrets.token_hex(4)}"
    if key_id in entries:
        raise ValueError(f"a key with id {key_id!r} exists already; revoke it or pick another id")
    key, entry = new_key(key_id, namespaces)
    write_keys(path, {**entries, key_id: entry})
    return key


def revoke_key(path: Path, key_id: str) -> None:
    entries = read_keys(path)
    if key_id not in entries:
        raise ValueError(f"no key with id {key_id!r} in {path}")
    entries[key_id] = dataclasses.replace(entries[key_id], revoked=True)
    write_keys(path, entries)


class KeyStore:
    """The keys file, re-read when it changes, so a revocation takes effect on the next call.

    A stat() per call is far cheaper than the call itself. A file that cannot be
    read or parsed keeps the last good keys (logged) rather than letting everyone
    in or locking everyone out mid-edit; at start-up it is an error.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, KeyEntry] = {}
        self._reload(initial=True)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> KeyEntry | None:
        """The entry of a valid, unrevoked key; None otherwise. Constant-time on the hash."""
        self._reload()
        key_id = key_id_of(key)
        entry = self._entries.get(key_id) if key_id else None
        if entry is None or entry.revoked:
            return None
        return entry if hmac.compare_digest(entry.sha256, hash_key(key)) else None

    def _reload(self, initial: bool = False) -> None:
        failure: OSError | None = None
        try:
            stat = self._path.stat()  # follows symlinks: a Kubernetes Secret update swaps one
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError as error:
            stamp, failure = (0, 0, 0), error
        if stamp == self._stamp:
            return
        # Remembered even when reading fails: one warning per change, not one per call.
        self._stamp = stamp
        try:
            if failure is not None:
                raise failure
            self._entries = read_keys(self._path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            if initial:
                raise ValueError(f"cannot read the API keys file {self._path}: {error}") from error
            log.warning(
                "cannot reload the API keys file %s, keeping the last good keys: %s", self._path, error
            )
            return
        log.info("loaded %d API keys from %s", len(self._entries), self._path)
