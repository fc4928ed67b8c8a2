"""API keys: the file format, hashing, create/list/revoke, reloading, and the gateway's checks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway import keys
from gateway.auth import ANYONE, Authorizer, key_from_metadata
from rag_cli.main import main
from services.common.errors import PermissionDenied, Unauthenticated


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys.json"


def test_a_key_names_its_id_and_only_its_hash_is_stored(keys_file: Path) -> None:
    key = keys.create_key(keys_file, ("a", "b"), "team-a")
    assert key.startswith("rag_team-a_")
    assert keys.key_id_of(key) == "team-a"
    text = keys_file.read_text()
    assert key not in text
    assert key.split("_", 2)[2] not in text
    (entry,) = json.loads(text)["keys"]
    assert entry["sha256"] == keys.hash_key(key)
    assert entry["namespaces"] == ["a", "b"]
    assert entry["revoked"] is False
    assert entry["created_at"]
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"


def test_keys_are_random_and_long() -> None:
    first, _ = keys.new_key("k", ("a",))
    second, _ = keys.new_key("k", ("a",))
    assert first != second
    assert len(first.split("_", 2)[2]) == 43  # 32 bytes, URL-safe base64 without padding


@pytest.mark.parametrize("bad", ["", "nope", "rag_", "rag_id", "rag_id_", "rag_UP_secret", "Bearer rag_x_y"])
def test_malformed_keys_have_no_id(bad: str) -> None:
    assert keys.key_id_of(bad) is None


def test_lookup_accepts_only_the_exact_unrevoked_key(keys_file: Path) -> None:
    key = keys.create_key(keys_file, ("a",), "team-a")
    store = keys.KeyStore(keys_file)
    entry = store.lookup(key)
    assert entry is not None
    assert entry.allows("a")
    assert not entry.allows("b")
    assert store.lookup(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.lookup("rag_other_" + key.split("_", 2)[2]) is None


def test_revocation_and_new_keys_take_effect_without_restart(keys_file: Path) -> None:
    key = keys.create_key(keys_file, ("a",), "team-a")
    store = keys.KeyStore(keys_file)
    assert store.lookup(key) is not None
    keys.revoke_key(keys_file, "team-a")
    assert store.lookup(key) is None
    later = keys.create_key(keys_file, ("*",), "admin")
    found = store.lookup(later)
    assert found is not None
    assert found.allows("anything")


def test_a_broken_file_keeps_the_last_good_keys(keys_file: Path) -> None:
    key = keys.create_key(keys_file, ("a",), "team-a")
    store = keys.KeyStore(keys_file)
    keys_file.write_text("{not json")
    os.utime(keys_file, ns=(1, 1))
    assert store.lookup(key) is not None


def test_a_missing_or_broken_file_stops_the_start_up(keys_file: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the API keys file"):
        keys.KeyStore(keys_file)
    keys_file.write_text('{"keys": [{"id": "x"}]}')
    with pytest.raises(ValueError, match="cannot read the API keys file"):
        keys.KeyStore(keys_file)


def test_ids_and_namespaces_are_checked(keys_file: Path) -> None:
    with pytest.raises(ValueError, match="key id"):
        keys.create_key(keys_file, ("a",), "has_underscore")
    with pytest.raises(ValueError, match="namespace"):
        keys.create_key(keys_file, ("Not OK",), "k")
    with pytest.raises(ValueError, match="at least one namespace"):
        keys.create_key(keys_file, (), "k")
    keys.create_key(keys_file, ("a",), "k")
    with pytest.raises(ValueError, match="exists already"):
        keys.create_key(keys_file, ("a",), "k")


def test_cli_create_list_revoke(keys_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    created = ["keys", "create", "--file", str(keys_file), "--namespace", "a", "--namespace", "b"]
    assert main([*created, "--id", "team-a"]) == 0
    key = capsys.readouterr().out.strip()
    assert keys.key_id_of(key) == "team-a"
    assert main(["keys", "revoke", "--file", str(keys_file), "team-a"]) == 0
    assert main(["keys", "list", "--file", str(keys_file)]) == 0
    listed = capsys.readouterr().out
    assert "team-a\ta,b\t" in listed
    assert listed.rstrip().endswith("revoked")
    assert key not in listed
    assert keys.hash_key(key) not in listed
    assert main(["keys", "revoke", "--file", str(keys_file), "nobody"]) == 2


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), None),
        ((("authorization", "Bearer k1"),), "k1"),
        ((("authorization", "bearer  k1 "),), "k1"),
        ((("authorization", "Basic k1"),), ""),
        ((("x-api-key", "k2"),), "k2"),
        ((("other", "v"), ("x-api-key", b"k3")), "k3"),
    ],
)
def test_key_from_metadata(metadata: tuple[tuple[str, Any], ...], expected: str | None) -> None:
    assert key_from_metadata(metadata) == expected


def test_authorizer_errors_never_echo_the_key(keys_file: Path) -> None:
    key = keys.create_key(keys_file, ("a",), "team-a")
    authorizer = Authorizer(keys.KeyStore(keys_file))
    caller = authorizer.authenticate((("authorization", f"Bearer {key}"),))
    caller.require_grant("a")
    with pytest.raises(PermissionDenied) as denied:
        caller.require_grant("b")
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.field == "namespace"
    assert "'b'" in denied.value.message
    for metadata in [(), (("x-api-key", key + "x"),), (("authorization", key),)]:
        with pytest.raises(Unauthenticated) as refused:
            authorizer.authenticate(metadata)
        assert key not in refused.value.message
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert key not in str(denied.value)


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer rag_nobody_not-a-real-secret"),), (("x-api-key", "garbage"),)],
)
def test_authentication_off_lets_every_caller_into_every_namespace(
    metadata: tuple[tuple[str, str], ...],
) -> None:
    caller = Authorizer(None).authenticate(metadata)
    assert caller == ANYONE
    assert caller.key is None
    for namespace in ("default", "team-b", "*"):
        caller.require_grant(namespace)  # raises nothing: every namespace is granted
