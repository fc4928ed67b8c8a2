"""The schema is ready to be distributed by namespace (Citus), checked in the catalog.

Distributed tables must have the distribution column in every primary key,
unique constraint and foreign key, and foreign keys between them must join on
it, so each statement and each constraint check stays within one shard.
Tables without a namespace are global (a reference table each, under Citus).
Citus itself is not installed here; docs/scaling.md says what running on it
takes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from services.retriever.schema import TABLES
from services.retriever.store import ChunkStore
from tests.retriever.conftest import DIMENSION

MakeDatabase = Callable[[], Awaitable[str]]

# Global tables: the migrations applied and the settings the keyword index was built with.
REFERENCE_TABLES = {"rag_schema_migrations", "rag_settings"}

_CONSTRAINTS_SQL = """
SELECT c.conrelid::regclass::text AS table_name, c.conname, c.contype::text AS contype,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY AS k (n, i)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i) AS columns,
       c.confrelid::regclass::text AS referenced,
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY AS k (n, i)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
           AS referenced_columns
FROM pg_constraint c
WHERE c.contype IN ('p', 'u', 'f') AND c.conrelid::regclass::text = ANY ($1::text[])
"""


async def test_every_key_of_a_table_with_a_namespace_holds_it(make_database: MakeDatabase) -> None:
    dsn = await make_database()
    await (await ChunkStore.connect(dsn, dimension=DIMENSION)).close()
    conn = await asyncpg.connect(dsn)
    try:
        with_namespace = {
            row["table_name"]
            for row in await conn.fetch(
                "SELECT c.relname AS table_name FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
                " WHERE c.relname = ANY ($1::text[]) AND a.attname = 'namespace' AND NOT a.attisdropped",
                list(TABLES),
            )
        }
        constraints = await conn.fetch(_CONSTRAINTS_SQL, list(TABLES))
    finally:
        await conn.close()

    assert set(TABLES) - with_namespace == REFERENCE_TABLES
    assert {"rag_feedback", "rag_feedback_items"} <= with_namespace
    checked = [c for c in constraints if c["table_name"] in with_namespace]
    assert {c["contype"] for c in checked} == {"p", "u", "f"}
    for constraint in checked:
        assert "namespace" in constraint["columns"], constraint["conname"]
        if constraint["contype"] == "f":
            assert constraint["referenced"] in with_namespace, constraint["conname"]
            position = list(constraint["columns"]).index("namespace")
            assert constraint["referenced_columns"][position] == "namespace", constraint["conname"]
