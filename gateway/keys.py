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

Edits (create_key, revoke_key: `rag keys`) hold an exclusive lock on a sibling
file for their whole read-modify-write, so two at once both land, and replace
the file atomically (a new file renamed over it, mode 0600), so a gateway
re-reading it never sees half of one.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import Unavailable
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
    # mkstemp creates the file readable by its owner only (0600), before a byte is in it.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())  # on disk before it is renamed into place
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def lock_path(path: Path) -> Path:
    """The file an edit of `path` locks: a sibling, since each edit replaces `path` itself."""
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Holds the exclusive edit lock of the keys file at `path`, waiting for any other edit to finish."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # gives the lock back


def create_key(path: Path, namespaces: tuple[str, ...], key_id: str | None = None) -> str:
    with locked(path):
        entries = read_keys(path)
        key_id = key_id or f"key-{secrets.token_hex(4)}"
        if key_id in entries:
            raise ValueError(f"a key with id {key_id!r} exists already; revoke it or pick another id")
        key, entry = new_key(key_id, namespaces)
        write_keys(path, {**entries, key_id: entry})
    return key


def revoke_key(path: Path, key_id: str) -> None:
    with locked(path):
        entries = read_keys(path)
        if key_id not in entries:
            raise ValueError(f"no key with id {key_id!r} in {path}")
        entries[key_id] = dataclasses.replace(entries[key_id], revoked=True)
        write_keys(path, entries)


# How soon a caller refused while the keys file cannot be read may try again.
KEYS_RETRY_AFTER_MS = 1000
_NOT_READ_YET = "not read yet"


class KeysFileUnreadable(Unavailable):
    def __init__(self) -> None:
        super().__init__(
            "the API keys file cannot be read; the gateway serves no call that needs a key until "
            f"it can, retry in about {KEYS_RETRY_AFTER_MS} ms",
            retry_after_ms=KEYS_RETRY_AFTER_MS,
        )


class KeyStore:
    """The keys file, re-read when it changes, so a revocation takes effect on the next call.

    A stat() per call is far cheaper than the call itself.

    The store fails closed. While the file cannot be read or parsed (deleted,
    unreadable, malformed) it holds no keys at all: every lookup raises
    KeysFileUnreadable (UNAVAILABLE, with a retry hint), and the gateway reports
    NOT_SERVING (gateway/auth.py checks the file without waiting for a call), so
    load balancers stop sending it calls. Keeping the last good keys instead
    would keep a key revoked in the broken version alive for as long as the file
    stays broken, and letting every caller in would be worse; refusing every
    key is the one rule under which no revoked key works. Its cost is small:
    `rag keys` and Kubernetes Secret updates replace the file atomically, so a
    broken file is a mistake to fix, not a moment in every edit, and callers
    retry the refusal. While broken, every check reads the file again, changed
    or not (a permission fixed leaves its mtime alone); the breaking and the
    mending are logged once each. At start-up, a broken file is an error.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, KeyEntry] = {}
        # Why the file cannot be used, while it cannot; None while it is valid.
        self._broken: str | None = _NOT_READ_YET
        if not self.refresh():
            raise ValueError(f"cannot read the API keys file {path}: {self._broken}")

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> KeyEntry | None:
        """The entry of a valid, unrevoked key; None otherwise. Constant-time on the hash.

        Raises KeysFileUnreadable while the file cannot be read.
        """
        if not self.refresh():
            raise KeysFileUnreadable()
        key_id = key_id_of(key)
        entry = self._entries.get(key_id) if key_id else None
        if entry is None or entry.revoked:
            return None
        return entry if hmac.compare_digest(entry.sha256, hash_key(key)) else None

    def refresh(self) -> bool:
        """Reads the file again if it changed, or if it could not be read last time; whether it is valid."""
        try:
            stat = self._path.stat()  # follows symlinks: a Kubernetes Secret update swaps one
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if stamp == self._stamp and self._broken is None:
                return True
            # A change between the stat and the read is seen by the next call's stat.
            entries = read_keys(self._path)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            self._break(error)
            return False
        self._stamp, self._entries = stamp, entries
        if self._broken in (None, _NOT_READ_YET):
            log.info("loaded %d API keys from %s", len(entries), self._path)
        else:
            log.warning("the API keys file %s is valid again: %d keys; serving", self._path, len(entries))
        self._broken = None
        return True

    def _break(self, error: Exception) -> None:
        self._entries, self._stamp = {}, None
        just_broke = self._broken is None
        self._broken = f"{type(error).__name__}: {error}"
        if just_broke:
            log.error(
                "the API keys file %s cannot be read (%s): every call that needs a key is refused "
                "with UNAVAILABLE and health is NOT_SERVING until it is valid again",
                self._path,
                self._broken,
            )
