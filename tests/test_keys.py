"""API keys: the file format, hashing, create/list/revoke under the lock, reloading that fails closed,
and the gateway's checks."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from gateway import keys
from gateway.auth import ANYONE, Authorizer, key_from_metadata, require_keys_unless_local
from gateway.config import GatewaySettings
from rag_cli.main import main
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.loopback import is_loopback_host

# Far longer than any step here takes: only a failure waits this long.
WAIT_S = 30.0


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


def _refused_while_broken(store: keys.KeyStore, key: str) -> keys.KeysFileUnreadable:
    with pytest.raises(keys.KeysFileUnreadable) as refused:
        store.lookup(key)
    return refused.value


def test_a_broken_file_refuses_every_key_until_it_is_valid_again(
    keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kept = keys.create_key(keys_file, ("a",), "kept")
    revoked = keys.create_key(keys_file, ("a",), "revoked")
    keys.revoke_key(keys_file, "revoked")
    store = keys.KeyStore(keys_file)
    valid = keys_file.read_text()
    # The same number of bytes, written in place and stamped with the same time:
    # neither the size, the inode nor the mtime tells the store the file changed back.
    broken = "[" + valid[1:]  # the object opened as a list: not JSON
    stamp = keys_file.stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger=keys.__name__):
        keys_file.write_text(broken)
        os.utime(keys_file, ns=(stamp + 1, stamp + 1))
        refusals = [_refused_while_broken(store, key) for key in (revoked, kept, revoked)]
        health_while_broken = store.refresh()
        keys_file.write_text(valid)
        os.utime(keys_file, ns=(stamp + 1, stamp + 1))
        kept_again = store.lookup(kept)
        revoked_again = store.lookup(revoked)

    assert [refusal.code for refusal in refusals] == [grpc.StatusCode.UNAVAILABLE] * 3
    assert refusals[0].retry_after_ms == keys.KEYS_RETRY_AFTER_MS
    assert "the API keys file cannot be read" in refusals[0].message
    assert str(keys_file) not in refusals[0].message, "the caller is not told where the file is"
    assert health_while_broken is False
    assert kept_again is not None
    assert kept_again.id == "kept"
    assert revoked_again is None
    levels = [(record.levelname, record.getMessage().split(":")[0]) for record in caplog.records]
    assert levels == [
        ("ERROR", f"the API keys file {keys_file} cannot be read (JSONDecodeError"),
        ("WARNING", f"the API keys file {keys_file} is valid again"),
    ], "one line when it breaks, one when it is valid again"


def test_a_deleted_file_refuses_every_key(keys_file: Path) -> None:
    key = keys.create_key(keys_file, ("a",), "team-a")
    store = keys.KeyStore(keys_file)
    keys_file.unlink()
    _refused_while_broken(store, key)
    keys.create_key(keys_file, ("b",), "team-b")
    assert store.lookup(key) is None, "a file written anew holds only its own keys"


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


def _waiters_on(lock: Path) -> int:
    """Lock requests blocked on `lock` right now, from the kernel's table (Linux: '->' marks a waiter)."""
    inode = f":{lock.stat().st_ino} "
    return sum(1 for line in Path("/proc/locks").read_text().splitlines() if "->" in line and inode in line)


def _wait_for_waiters(lock: Path, count: int) -> bool:
    # The kernel marks no event when a lock request starts waiting: poll its table,
    # bounded only as a failure.
    deadline = time.monotonic() + WAIT_S
    while _waiters_on(lock) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_edits_at_the_same_time_wait_for_the_lock_and_both_land(keys_file: Path) -> None:
    keys.create_key(keys_file, ("a",), "first")
    made: dict[str, str] = {}
    failures: list[BaseException] = []

    def create(key_id: str) -> None:
        try:
            made[key_id] = keys.create_key(keys_file, ("a",), key_id)
        except BaseException as error:
            failures.append(error)

    editors = [threading.Thread(target=create, args=(key_id,)) for key_id in ("second", "third")]
    # Hold the lock as an editor would, so both creations are under way at once when it is let go.
    with keys.locked(keys_file):
        for editor in editors:
            editor.start()
        both_waited = _wait_for_waiters(keys.lock_path(keys_file), 2)
    for editor in editors:
        editor.join()

    store = keys.KeyStore(keys_file)
    assert both_waited, "each creation waits for the lock before it reads the file"
    assert failures == []
    assert set(keys.read_keys(keys_file)) == {"first", "second", "third"}
    assert all(store.lookup(key) is not None for key in made.values())
    assert oct(keys.lock_path(keys_file).stat().st_mode & 0o777) == "0o600"
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"


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


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("gateway.example", False),
    ],
)
def test_only_loopback_hosts_count_as_local(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_a_gateway_off_loopback_needs_keys_or_an_explicit_choice_to_run_without(keys_file: Path) -> None:
    keys.create_key(keys_file, ("a",), "team-a")
    with pytest.raises(ValidationError) as refused:
        GatewaySettings(host="0.0.0.0")
    message = str(refused.value)

    assert "GATEWAY_API_KEYS_FILE is not set" in message
    assert "GATEWAY_ALLOW_UNAUTHENTICATED=true" in message
    assert GatewaySettings(host="0.0.0.0", api_keys_file=keys_file).api_keys_file == keys_file
    assert GatewaySettings(host="0.0.0.0", allow_unauthenticated=True).allow_unauthenticated
    assert GatewaySettings(host="127.0.0.1").api_keys_file is None
    # The check itself, with the names of the settings it is given.
    require_keys_unless_local("::1", None, False, str.upper)
    with pytest.raises(ValueError, match="API_KEYS_FILE is not set"):
        require_keys_unless_local("10.0.0.7", None, False, str.upper)


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"max_in_flight": 8, "max_in_flight_per_key": 9}, ["GATEWAY_MAX_IN_FLIGHT_PER_KEY (9)", "(8)"]),
        ({"max_concurrent_rpcs": 20}, ["GATEWAY_MAX_CONCURRENT_RPCS (20)", "(20)", "probes"]),
        ({"max_deadline_s": 30, "default_deadline_s": 31}, ["GATEWAY_DEFAULT_DEADLINE_S (31", "(30"]),
    ],
)
def test_limits_that_contradict_each_other_stop_the_start_up(
    settings: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(ValidationError) as refused:
        GatewaySettings(**settings)
    for name in names:
        assert name in str(refused.value)


def test_the_per_key_limit_left_at_its_default_follows_a_lower_global_one() -> None:
    assert GatewaySettings(max_in_flight=4).in_flight_per_key == 4
    assert GatewaySettings().in_flight_per_key == GatewaySettings().max_in_flight_per_key
