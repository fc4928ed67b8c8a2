"""The retriever's document store: documents, their chunks and embeddings in PostgreSQL with pgvector.

Plain async Python over an asyncpg pool, testable without gRPC:

- chunk_store.py: ChunkStore, the façade the servicer holds (connect, close,
  ping, and one method per operation);
- records.py: the values it takes and gives back;
- validation.py: the checks on caller input, run before any SQL;
- reads.py and writes.py: the statements, each function on a connection it
  is given, reads apart from writes;
- feedback.py: relevance feedback on search results, its statements and paging;
- connection.py: pools, codecs, time limits, and what the database's
  outages and timeouts become (Unavailable, DeadlineExceeded).
"""

from services.retriever.store.chunk_store import ChunkStore

__all__ = ["ChunkStore"]
