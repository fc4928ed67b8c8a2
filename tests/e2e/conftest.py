"""Fixtures shared by the end-to-end tests (the stack itself is in tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from rag_cli.stack import Stack

ChunkReader = Callable[[str], dict[str, list[str]]]


@pytest.fixture
def stored_chunks(stack: Stack) -> ChunkReader:
    """Reads the chunk table directly, to see what ingest really wrote."""
    database_url = stack.database_url_in_use

    def read(namespace: str) -> dict[str, list[str]]:
        async def query() -> dict[str, list[str]]:
            connection = await asyncpg.connect(database_url)
            try:
                rows = await connection.fetch(
                    "SELECT document_id, text FROM rag_chunks WHERE namespace = $1"
                    " ORDER BY document_id, chunk_index",
                    namespace,
                )
            finally:
                await connection.close()
            chunks: dict[str, list[str]] = {}
            for row in rows:
                chunks.setdefault(row["document_id"], []).append(row["text"])
            return chunks

        return asyncio.run(query())

    return read
