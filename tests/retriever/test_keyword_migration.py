"""A database written before keyword blocks: migrated, searched exactly while converting, converted.

The database is written at schema version 5, its postings in rag_postings (one
row per posting) as that version's code wrote them, and searched with that
version's keyword statement. Then the retriever starts on it: migration 6 is
quick (no posting moves), the search reads the old postings as they are, and
the converter moves them into blocks in batches. The results stay those of
version 5 throughout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import numpy as np
import pytest

from services.retriever import keyword_index
from services.retriever.keyword import Bm25, search_exhaustively
from services.retriever.schema import MIGRATIONS, migrate
from services.retriever.store import ChunkStore
from tests.retriever.conftest import DIMENSION
from tests.retriever.test_keyword_pruning import VOCABULARY, assert_index_is_whole, pruned, random_text

MakeDatabase = Callable[[], Awaitable[str]]

# Version 5's keyword statement, scoring every posting in rag_postings.
V5_KEYWORD_SQL = """
WITH keyword_postings AS MATERIALIZED (
    SELECT p.chunk_id, p.lexeme, p.tf, p.chunk_length
    FROM rag_postings p
    WHERE p.namespace = $1
      AND p.lexeme = ANY (ARRAY(SELECT t.lexeme FROM unnest(to_tsvector('english', $2)) AS t))
),
keyword_corpus AS (
    SELECT s.chunks::float8 AS n, s.total_length::float8 / nullif(s.chunks, 0) AS avg_length
    FROM rag_keyword_stats s WHERE s.namespace = $1
),
keyword_terms AS (
    SELECT p.lexeme, ln(1 + (k.n - count(*) + 0.5) / (count(*) + 0.5)) AS idf
    FROM keyword_postings p CROSS JOIN keyword_corpus k GROUP BY p.lexeme, k.n
),
keyword_scores AS (
    SELECT p.chunk_id AS id,
           sum(t.idf * p.tf * (1.2 + 1) / (p.tf + 1.2 * (1 - 0.75 + 0.75 * p.chunk_length / k.avg_length)))
               AS score
    FROM keyword_postings p JOIN keyword_terms t ON t.lexeme = p.lexeme CROSS JOIN keyword_corpus k
    GROUP BY p.chunk_id
)
SELECT id, score FROM keyword_scores ORDER BY score DESC, id LIMIT $3
"""

NAMESPACES = ("alpha", "beta")


async def write_version_5_database(dsn: str, rng: np.random.Generator) -> None:
    """Chunks stored at version 1, then migrations 2 to 5, whose indexer wrote version 5's postings."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, dimension=DIMENSION, hnsw_m=16, hnsw_ef_construction=64, up_to=1)
        for namespace in NAMESPACES:
            for d in range(60):
                title = random_text(rng, 2)
                await conn.execute(
                    "INSERT INTO rag_documents (namespace, document_id, content_hash, title, chunk_count)"
                    " VALUES ($1, $2, 'h', $3, 3)",
                    namespace,
                    f"doc{d}",
                    title,
                )
                for index in range(3):
                    vector = "[" + ",".join(str(x) for x in rng.standard_normal(DIMENSION)) + "]"
                    await conn.execute(
                        "INSERT INTO rag_chunks (namespace, document_id, chunk_index, text, metadata,"
                        " content_hash, embedding) VALUES ($1, $2, $3, $4, '{}', 'h', $5::vector)",
                        namespace,
                        f"doc{d}",
                        index,
                        random_text(rng, int(rng.choice([5, 30, 120]))),
                        vector,
                    )
        await migrate(conn, dimension=DIMENSION, hnsw_m=16, hnsw_ef_construction=64, up_to=5)
        assert await conn.fetchval("SELECT count(*) FROM rag_postings") > 1000
    finally:
        await conn.close()


async def test_a_version_5_database_is_converted_and_searches_the_same_throughout(
    make_database: MakeDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = await make_database()
    rng = np.random.default_rng(11)
    await write_version_5_database(dsn, rng)
    queries = [random_text(rng, int(rng.integers(1, 6))) for _ in range(10)] + [" ".join(VOCABULARY[:3])]
    conn = await asyncpg.connect(dsn)
    try:
        expected = {
            (namespace, text): [tuple(r) for r in await conn.fetch(V5_KEYWORD_SQL, namespace, text, 20)]
            for namespace in NAMESPACES
            for text in queries
        }

        async def assert_same_results() -> None:
            for (namespace, text), rows in expected.items():
                leg = await pruned(conn, namespace, text, 20)
                assert leg.scores == pytest.approx([s for _, s in rows], rel=1e-9), text
                exhaustive = await search_exhaustively(
                    conn, namespace, text, 20, text_search_config="english", bm25=Bm25()
                )
                assert [i for i, _ in exhaustive] == [i for i, _ in rows]
                assert [s for _, s in exhaustive] == pytest.approx([s for _, s in rows], rel=1e-12)

        # Small batches, so the conversion takes several rounds, searched between them.
        monkeypatch.setattr(keyword_index, "CONVERSION_BATCH_POSTINGS", 700)
        monkeypatch.setattr(keyword_index, "CONVERSION_BATCH_CHUNKS", 40)
        store = await ChunkStore.connect(dsn, dimension=DIMENSION)
        try:
            # Migrated, nothing converted yet: the old postings are read as they are.
            assert (
                await conn.fetchval("SELECT max(version) FROM rag_schema_migrations")
                == MIGRATIONS[-1].version
            )
            assert await conn.fetchval("SELECT count(*) FROM rag_keyword_blocks") == 0
            await assert_same_results()

            rounds = 0
            while (await store.maintain_keyword_index()).worked:
                rounds += 1
                await assert_same_results()
            assert rounds > 3

            assert await conn.fetchval("SELECT count(*) FROM rag_postings") == 0
            assert await conn.fetchval("SELECT count(*) FROM rag_chunk_lexemes") == await conn.fetchval(
                "SELECT count(*) FROM rag_chunks"
            )
            for namespace in NAMESPACES:
                await assert_index_is_whole(conn, namespace)
            await assert_same_results()

            # Writes after the conversion keep the index whole.
            await store.delete("alpha", ["doc1", "doc2"])
            await assert_index_is_whole(conn, "alpha")
        finally:
            await store.close()
    finally:
        await conn.close()
