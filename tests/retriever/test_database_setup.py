"""database_setup: the vector extension, the least-privileged role rag_retriever and its schema."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from services.retriever.database_setup import ADMIN_URL_VARIABLE, main, prepare_embedded, role_dsn, set_up
from services.retriever.role_password import (
    PASSWORD_FILE_VARIABLE,
    PASSWORD_VARIABLE,
    PasswordError,
    read_password,
    scram_sha256_verifier,
)
from services.retriever.schema import RETRIEVER_ROLE, RETRIEVER_SCHEMA, TABLES
from services.retriever.store import ChunkStore
from tests.retriever.conftest import DIMENSION
from tests.retriever.test_store import document, random_vector

MakeDatabase = Callable[[], Awaitable[str]]

STORE_LOG = "services.retriever.store.connection"


@asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def owners(conn: asyncpg.Connection, schema: str) -> dict[str, str]:
    """Owner by name of the tables and sequences in `schema`."""
    rows = await conn.fetch(
        """
        SELECT c.relname, pg_get_userbyid(c.relowner) AS owner
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'S')
        """,
        schema,
    )
    return {row["relname"]: row["owner"] for row in rows}


async def a_database_as_before_the_setup(make_admin_database: MakeDatabase) -> str:
    """A database as deployments had it before the setup existed: the extension, made by a superuser."""
    admin = await make_admin_database()
    async with connected(admin) as conn:
        await conn.execute("CREATE EXTENSION vector")
    return admin


async def a_database_migrated_by_the_role(make_admin_database: MakeDatabase) -> str:
    """A database set up, whose tables the retriever's role has made; the administrator's DSN."""
    admin = await make_admin_database()
    store = await ChunkStore.connect(await prepare_embedded(admin), dimension=DIMENSION)
    await store.close()
    return admin


async def test_the_setup_runs_again_without_changing_what_is_stored(
    make_admin_database: MakeDatabase,
) -> None:
    admin = await make_admin_database()
    dsn = await prepare_embedded(admin)
    store = await ChunkStore.connect(dsn, dimension=DIMENSION)
    try:
        await store.upsert("ns", [document("doc", "h1")])
        assert await prepare_embedded(admin) == dsn
        assert await store.content_hashes("ns", ["doc"]) == {"doc": "h1"}
    finally:
        await store.close()

    async with connected(admin) as conn:
        # The migrations made exactly schema.TABLES, and the role owns each, with their sequences.
        assert await owners(conn, RETRIEVER_SCHEMA) == {
            **dict.fromkeys(TABLES, RETRIEVER_ROLE),
            "rag_chunks_id_seq": RETRIEVER_ROLE,
            "rag_keyword_blocks_id_seq": RETRIEVER_ROLE,
            "rag_feedback_feedback_id_seq": RETRIEVER_ROLE,
        }
        assert await owners(conn, "public") == {}
        assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'vector'") == 1


async def test_the_role_logs_in_and_holds_no_special_power(make_database: MakeDatabase) -> None:
    async with connected(await make_database()) as conn:
        attributes = await conn.fetchrow(
            """
            SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls
            FROM pg_roles WHERE rolname = current_user
            """
        )
        assert await conn.fetchval("SELECT current_user") == RETRIEVER_ROLE
    assert dict(attributes) == {
        "rolcanlogin": True,
        "rolsuper": False,
        "rolcreatedb": False,
        "rolcreaterole": False,
        "rolreplication": False,
        "rolbypassrls": False,
    }


async def test_a_store_connected_as_the_role_works_without_a_superuser_warning(
    make_database: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=STORE_LOG):
        store = await ChunkStore.connect(await make_database(), dimension=DIMENSION)
    try:
        vector = random_vector()
        await store.upsert("ns", [document("doc", embeddings=[vector], texts=["krill swarms"])])
        assert [hit.document_id for hit in await store.search("ns", 3, embedding=vector, text="krill")] == [
            "doc"
        ]
        assert await store.delete("ns", ["doc"]) == (1, 1)
    finally:
        await store.close()
    assert [record.message for record in caplog.records] == []


# What the role must not do; each statement on a connection as the role.
BEYOND_THE_ROLE = [
    "SELECT rolpassword FROM pg_authid",
    "SELECT * FROM public.administrators_only",
    "DROP EXTENSION vector",
    "CREATE SCHEMA elsewhere",
    "CREATE TABLE public.planted (x int)",
    "CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE ROLE accomplice",
    "ALTER ROLE rag_retriever SUPERUSER",
    "CREATE DATABASE another",
    "SELECT pg_read_file('PG_VERSION')",
    "COPY (SELECT 1) TO PROGRAM 'true'",
]


async def test_the_role_cannot_reach_beyond_its_own_tables(make_admin_database: MakeDatabase) -> None:
    admin = await make_admin_database()
    dsn = await prepare_embedded(admin)
    async with connected(admin) as conn:
        await conn.execute("CREATE TABLE public.administrators_only (secret text)")
    allowed = []
    async with connected(dsn) as conn:
        for statement in BEYOND_THE_ROLE:
            try:
                await conn.execute(statement)
            except asyncpg.InsufficientPrivilegeError:
                continue
            allowed.append(statement)
    assert allowed == []


async def test_without_the_setup_the_role_can_neither_create_the_extension_nor_start(
    make_database: MakeDatabase, make_admin_database: MakeDatabase
) -> None:
    await make_database()  # the role exists
    unprepared = role_dsn(await make_admin_database())
    async with connected(unprepared) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied to create extension"):
            await conn.execute("CREATE EXTENSION vector")
    with pytest.raises(
        RuntimeError, match=r"vector extension is not installed.*services\.retriever\.database_setup"
    ):
        await ChunkStore.connect(unprepared, dimension=DIMENSION)


async def test_a_superuser_connection_works_but_is_warned_about(
    make_admin_database: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await a_database_as_before_the_setup(make_admin_database)
    with caplog.at_level(logging.WARNING, logger=STORE_LOG):
        store = await ChunkStore.connect(admin, dimension=DIMENSION)
    await store.close()
    (warning,) = caplog.records
    assert "a superuser" in warning.message
    assert "services.retriever.database_setup" in warning.message


async def test_tables_a_superuser_retriever_made_are_handed_to_the_role(
    make_admin_database: MakeDatabase,
) -> None:
    admin = await a_database_as_before_the_setup(make_admin_database)
    before = await ChunkStore.connect(admin, dimension=DIMENSION)
    try:
        await before.upsert("ns", [document("old", texts=["krill swarms"])])
    finally:
        await before.close()

    store = await ChunkStore.connect(await prepare_embedded(admin), dimension=DIMENSION)
    try:
        assert [hit.document_id for hit in await store.search_keyword("ns", "krill", 5)] == ["old"]
        # Writing takes the next chunk id: the sequence moved with its table.
        await store.upsert("ns", [document("new", texts=["whales sing"])])
        assert await store.delete("ns", ["old"]) == (1, 1)
    finally:
        await store.close()
    async with connected(admin) as conn:
        assert await owners(conn, "public") == {}
        assert set((await owners(conn, RETRIEVER_SCHEMA)).values()) == {RETRIEVER_ROLE}


async def test_a_superuser_is_refused_where_the_tables_belong_to_the_role(
    make_admin_database: MakeDatabase,
) -> None:
    admin = await a_database_migrated_by_the_role(make_admin_database)
    # Its search path does not reach the role's schema: it would start an empty store beside it.
    with pytest.raises(RuntimeError, match=r"tables are in schema rag_retriever.*connect as rag_retriever"):
        await ChunkStore.connect(admin, dimension=DIMENSION)


async def test_tables_in_both_schemas_are_left_for_an_administrator(
    make_admin_database: MakeDatabase,
) -> None:
    admin = await a_database_migrated_by_the_role(make_admin_database)
    async with connected(admin) as conn:
        await conn.execute("CREATE TABLE public.rag_settings (name text)")
    with pytest.raises(RuntimeError, match="rag_settings exist in schema public and in schema rag_retriever"):
        await set_up(admin)


# The password

PASSWORD = "correct horse battery staple"
VERIFIER_SQL = "SELECT rolpassword FROM pg_authid WHERE rolname = $1"


async def stored_verifier(admin: str, role: str) -> str:
    async with connected(admin) as conn:
        verifier: str = await conn.fetchval(VERIFIER_SQL, role)
    return verifier


def salt_of(verifier: str) -> bytes:
    """The salt of a SCRAM-SHA-256$<iterations>:<salt>$<stored key>:<server key> verifier."""
    return base64.b64decode(verifier.split("$")[1].split(":")[1])


async def test_the_verifier_is_the_one_postgresql_computes(make_admin_database: MakeDatabase) -> None:
    async with connected(await make_admin_database()) as conn:
        # The server hashes a password of its own, in a transaction rolled back: no role stays.
        probe = conn.transaction()
        await probe.start()
        try:
            await conn.execute("SET LOCAL password_encryption = 'scram-sha-256'")
            await conn.execute(f"CREATE ROLE rag_scram_probe PASSWORD '{PASSWORD}'")
            servers = await conn.fetchval(VERIFIER_SQL, "rag_scram_probe")
        finally:
            await probe.rollback()
    assert scram_sha256_verifier(PASSWORD, salt=salt_of(servers)) == servers


async def test_the_command_stores_the_password_of_the_file(
    make_admin_database: MakeDatabase, tmp_path: Path
) -> None:
    admin = await make_admin_database()
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    environment = {**os.environ, ADMIN_URL_VARIABLE: admin}
    environment.pop(PASSWORD_VARIABLE, None)
    command = [
        sys.executable,
        "-m",
        "services.retriever.database_setup",
        "--password-file",
        str(password_file),
    ]
    done = await asyncio.to_thread(subprocess.run, command, env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"connect as {RETRIEVER_ROLE}" in done.stderr

    verifier = await stored_verifier(admin, RETRIEVER_ROLE)
    # Only the verifier reached the server: it is the one of the file's password.
    assert verifier == scram_sha256_verifier(PASSWORD, salt=salt_of(verifier))


def test_the_password_comes_from_the_file_then_the_environment(tmp_path: Path) -> None:
    named = tmp_path / "named"
    named.write_text("from-the-option\r\n")
    variable = tmp_path / "variable"
    variable.write_text("from-the-variable-file")
    environment = {PASSWORD_FILE_VARIABLE: str(variable), PASSWORD_VARIABLE: "from-the-variable"}
    assert read_password(named, environment) == "from-the-option"
    assert read_password(None, environment) == "from-the-variable-file"
    assert read_password(None, {PASSWORD_VARIABLE: "from-the-variable"}) == "from-the-variable"
    assert read_password(None, {}) is None


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "holds an empty password"),
        ("pässword", "must be printable ASCII"),
        ("tab\tinside", "must be printable ASCII"),
    ],
)
def test_a_password_the_verifier_cannot_be_computed_for_is_refused(password: str, message: str) -> None:
    with pytest.raises(PasswordError, match=message):
        read_password(None, {PASSWORD_VARIABLE: password})


def test_an_unreadable_password_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PasswordError, match="cannot read the password file"):
        read_password(tmp_path / "missing", {})


def test_the_command_needs_an_administrators_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ADMIN_URL_VARIABLE, raising=False)
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert f"give --admin-url or set {ADMIN_URL_VARIABLE}" in capsys.readouterr().err


def test_the_role_url_keeps_the_server_and_drops_the_administrators_credentials() -> None:
    admin = "postgresql://postgres:secret@db.example:5432/rag?sslmode=verify-full&user=postgres"
    assert role_dsn(admin) == "postgresql://rag_retriever@db.example:5432/rag?sslmode=verify-full"
    embedded = "postgresql://postgres:@/postgres?host=/tmp/pg"
    assert role_dsn(embedded) == "postgresql://rag_retriever@/postgres?host=%2Ftmp%2Fpg"
