"""python -m services.retriever.database_setup: prepares a PostgreSQL database for the retriever.

Run it with an administrator's connection once per database, before the
retriever first starts: a superuser, or on a managed service its
administrator role, which must be able to create the vector extension and to
SET ROLE rag_retriever (on PostgreSQL 16+, createrole_self_grant = 'set').
Running it again changes nothing that is already right, so it can run before
every deployment:

    RETRIEVER_ADMIN_DATABASE_URL=postgresql://postgres:...@db:5432/rag \\
    RETRIEVER_PASSWORD_FILE=/run/secrets/retriever-password \\
    python -m services.retriever.database_setup

(--admin-url and --password-file say the same on the command line, where
other users of the host can read them; RETRIEVER_PASSWORD holds the password
itself.) In one transaction, under the lock the retriever's migrations take:

1. CREATE EXTENSION IF NOT EXISTS vector, in schema public. pgvector is not a
   trusted extension, so this is the step that needs the administrator; the
   retriever only checks that it is there.
2. The role rag_retriever: LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
   NOREPLICATION NOBYPASSRLS, re-applied to a role that exists. Given a
   password, the role gets its SCRAM-SHA-256 verifier (role_password.py);
   without one a new role has none, so it can log in only where pg_hba.conf
   trusts it (the embedded server's local socket), and an existing role keeps
   its own.
3. The grants, which are all the role gets:
   - CONNECT on this database;
   - USAGE on schema public, where the vector type and its operators live;
   - the schema rag_retriever, owned by the role. The retriever's migrations
     create the rag_* tables there, so the role owns them, which is what
     ALTER TABLE and CREATE INDEX in later migrations need;
   - search_path = rag_retriever, public for the role in this database.
   Nothing else: no CREATE on the database (no schemas) or on public, no
   other schema's tables, no extensions, roles or databases, none of the
   superuser's catalogs (pg_authid), files or programs. What PostgreSQL
   grants PUBLIC by default (TEMP on the database, say) is left as the
   administrator has it.
4. Tables of the retriever (schema.TABLES) that a retriever connected as a
   superuser made in public are moved into the schema, so an upgraded
   deployment keeps its documents; then every one of them is given to the role.

A schema of its own rather than CREATE on public: an object the role could
create in public would be found through every other role's search path (a
function or operator shadowing one an administrator calls), while its own
schema is on no one else's path.

`prepare_embedded` does the same for the embedded PostgreSQL of `rag up` and
returns the URL the retriever connects with.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg

from services.common.telemetry import configure_logging
from services.retriever.role_password import (
    PASSWORD_FILE_VARIABLE,
    PASSWORD_VARIABLE,
    PasswordError,
    read_password,
    scram_sha256_verifier,
)
from services.retriever.schema import MIGRATION_LOCK_KEY, RETRIEVER_ROLE, RETRIEVER_SCHEMA, TABLES

log = logging.getLogger(__name__)

ADMIN_URL_VARIABLE = "RETRIEVER_ADMIN_DATABASE_URL"

ROLE_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


async def set_up(admin_dsn: str, password: str | None = None) -> None:
    """Steps 1-4 of the module docstring on the database `admin_dsn` names."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute("CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
            await _ensure_role(conn, password)
            await _grant(conn)
            moved = await _adopt_tables(conn)
        database = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    log.info(
        "database %s is ready for the retriever: connect as %s%s",
        database,
        RETRIEVER_ROLE,
        f"; moved {', '.join(moved)} from schema public into {RETRIEVER_SCHEMA}" if moved else "",
    )


async def prepare_embedded(admin_dsn: str) -> str:
    """Set up the embedded PostgreSQL (local socket, trust) and return the URL the retriever connects with."""
    await set_up(admin_dsn)
    return role_dsn(admin_dsn)


def role_dsn(admin_dsn: str) -> str:
    """`admin_dsn` with the retriever's role as its user and no password."""
    parts = urlsplit(admin_dsn)
    host = parts.netloc.rpartition("@")[2]
    query = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name not in ("user", "password")
    ]
    return urlunsplit(parts._replace(netloc=f"{quote(RETRIEVER_ROLE)}@{host}", query=urlencode(query)))


async def _ensure_role(conn: asyncpg.Connection, password: str | None) -> None:
    exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", RETRIEVER_ROLE)
    await conn.execute(f"{'ALTER' if exists else 'CREATE'} ROLE {RETRIEVER_ROLE} {ROLE_ATTRIBUTES}")
    if password is not None:
        # Quoted by the server: the verifier is a literal, never spliced in by hand.
        await conn.execute(
            await conn.fetchval(
                "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
                RETRIEVER_ROLE,
                scram_sha256_verifier(password),
            )
        )


async def _grant(conn: asyncpg.Connection) -> None:
    database = await conn.fetchval("SELECT quote_ident(current_database())")
    role, schema = RETRIEVER_ROLE, RETRIEVER_SCHEMA
    await conn.execute(
        f"""
        GRANT CONNECT ON DATABASE {database} TO {role};
        GRANT USAGE ON SCHEMA public TO {role};
        CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role};
        ALTER SCHEMA {schema} OWNER TO {role};
        ALTER ROLE {role} IN DATABASE {database} SET search_path = {schema}, public;
        """
    )


async def _adopt_tables(conn: asyncpg.Connection) -> list[str]:
    """Move the retriever's tables from public into its schema; give all of them to the role.

    Returns the names moved. Tables found in both schemas are two stores: the
    setup refuses to choose between them.
    """
    in_public = await _tables_in(conn, "public")
    in_schema = await _tables_in(conn, RETRIEVER_SCHEMA)
    if both := sorted(set(in_public) & set(in_schema)):
        raise RuntimeError(
            f"tables {', '.join(both)} exist in schema public and in schema {RETRIEVER_SCHEMA}; keep "
            "one of each (the retriever uses the second) and run the setup again"
        )
    for table in in_public:
        await conn.execute(f"ALTER TABLE public.{table} SET SCHEMA {RETRIEVER_SCHEMA}")
    for table in [*in_schema, *in_public]:
        # Also gives the role the sequences the table's columns own (rag_chunks.id's).
        await conn.execute(f"ALTER TABLE {RETRIEVER_SCHEMA}.{table} OWNER TO {RETRIEVER_ROLE}")
    return in_public


async def _tables_in(conn: asyncpg.Connection, schema: str) -> list[str]:
    rows = await conn.fetch(
        """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname = ANY($2::text[])
        ORDER BY c.relname
        """,
        schema,
        list(TABLES),
    )
    return [row["relname"] for row in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.retriever.database_setup",
        description="Prepare a PostgreSQL database for the retriever: the vector extension, the role "
        f"{RETRIEVER_ROLE} and its schema. Idempotent.",
    )
    parser.add_argument(
        "--admin-url",
        help=f"an administrator's connection URL (default: ${ADMIN_URL_VARIABLE}, which other users "
        "cannot read in the process list)",
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        help=f"a file holding the role's password (default: ${PASSWORD_FILE_VARIABLE}, else the "
        f"password in ${PASSWORD_VARIABLE}, else none)",
    )
    args = parser.parse_args(argv)
    admin_url = args.admin_url or os.environ.get(ADMIN_URL_VARIABLE)
    if not admin_url:
        parser.error(f"give --admin-url or set {ADMIN_URL_VARIABLE}")
    try:
        password = read_password(args.password_file, os.environ)
    except PasswordError as exc:
        parser.error(str(exc))
    configure_logging("INFO")
    try:
        asyncio.run(set_up(admin_url, password))
    except (OSError, asyncpg.PostgresError, RuntimeError) as exc:
        log.error("the database setup failed: %s: %s", type(exc).__name__, exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
