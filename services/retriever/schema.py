"""Schema migration, run by every retriever replica at start-up.

Migrations are numbered and applied in order, each recorded in
`rag_schema_migrations`, all in one transaction that holds an advisory lock:
replicas starting together queue on the lock, the first applies what is
missing, the rest find nothing left to do. A failed start-up leaves the schema
as it was.

To change the schema, append one `Migration` to `MIGRATIONS`; never edit one
that has shipped.

The keyword index (migration 2) is built with one text search configuration,
recorded in `rag_settings`; a retriever configured with another refuses to
start, since its query lexemes would not match the stored ones.

Nothing here needs a superuser: the vector extension, the role the retriever
connects as and the schema its tables live in are made beforehand by
database_setup.py, run once by an administrator. migrate() checks that the
extension is there and says to run the setup if it is not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

# Any fixed bigint will do, as long as nothing else in the database uses it for
# another purpose. These are the bytes of "ragschma".
MIGRATION_LOCK_KEY = 0x7261_6773_6368_6D61

# pgvector's limits: HNSW indexes vectors of up to 2000 dimensions; m is
# 2..100 and ef_construction 4..1000, at least 2 * m.
MAX_INDEXED_DIMENSION = 2000
MIN_HNSW_M = 2
MAX_HNSW_M = 100
MIN_HNSW_EF_CONSTRUCTION = 2 * MIN_HNSW_M
MAX_HNSW_EF_CONSTRUCTION = 1000
# pgvector's own defaults for the index build.
DEFAULT_HNSW_M = 16
DEFAULT_HNSW_EF_CONSTRUCTION = 64

# The language of the keyword index: a PostgreSQL text search configuration.
DEFAULT_TEXT_SEARCH_CONFIG = "english"

# pg_input_is_valid, which time-range filters use, came in PostgreSQL 16.
MIN_SERVER_VERSION_NUM = 160000

# The role the retriever connects as, and the schema that holds its tables:
# named alike, so the role's search path ("$user", public) finds it first.
# database_setup.py makes both.
RETRIEVER_ROLE = "rag_retriever"
RETRIEVER_SCHEMA = RETRIEVER_ROLE

# Every table the migrations create (tests/retriever/test_database_setup.py
# checks the list against them). database_setup.py hands these to the role
# when an earlier retriever, connected as a superuser, made them in public.
TABLES = (
    "rag_schema_migrations",
    "rag_documents",
    "rag_chunks",
    "rag_postings",
    "rag_keyword_stats",
    "rag_settings",
    "rag_document_failures",
    "rag_keyword_blocks",
    "rag_keyword_unmerged",
    "rag_chunk_lexemes",
    "rag_keyword_fresh",
    "rag_feedback",
    "rag_feedback_items",
)

SETUP_COMMAND = "python -m services.retriever.database_setup"


@dataclass(frozen=True, slots=True)
class SchemaSettings:
    """The deployment settings a migration may need. Validated ints, safe to format into DDL."""

    dimension: int
    hnsw_m: int
    hnsw_ef_construction: int
    # A regconfig name, checked against the database in migrate(); always an
    # SQL parameter, never formatted into SQL.
    text_search_config: str = DEFAULT_TEXT_SEARCH_CONFIG

    def __post_init__(self) -> None:
        # DDL cannot take parameters, so these are formatted into SQL: they
        # must be plain ints in range. This is configuration, not caller input,
        # hence ValueError rather than InvalidArgument.
        _require_int("dimension", self.dimension, 1, MAX_INDEXED_DIMENSION)
        _require_int("hnsw_m", self.hnsw_m, MIN_HNSW_M, MAX_HNSW_M)
        _require_int(
            "hnsw_ef_construction", self.hnsw_ef_construction, 2 * self.hnsw_m, MAX_HNSW_EF_CONSTRUCTION
        )


MigrationStep = str | Callable[[asyncpg.Connection, SchemaSettings], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    # Plain SQL, or a coroutine function for steps that need the settings.
    apply: MigrationStep


async def _create_documents_and_chunks(conn: asyncpg.Connection, settings: SchemaSettings) -> None:
    await conn.execute(
        """
        CREATE TABLE rag_documents (
            namespace    text        NOT NULL,
            document_id  text        NOT NULL,
            content_hash text        NOT NULL,
            title        text        NOT NULL DEFAULT '',
            metadata     jsonb       NOT NULL DEFAULT '{}',
            chunk_count  int         NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now(),
            updated_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (namespace, document_id)
        )
        """
    )
    # metadata and content_hash are copies of the document's, so a filtered
    # search reads one table. The unique constraint's index, led by
    # (namespace, document_id), serves the per-document deletes and the
    # cascade; a second btree on those two columns would only slow writes.
    await conn.execute(
        f"""
        CREATE TABLE rag_chunks (
            id           bigserial   PRIMARY KEY,
            namespace    text        NOT NULL,
            document_id  text        NOT NULL,
            chunk_index  int         NOT NULL,
            text         text        NOT NULL,
            start_char   int,
            end_char     int,
            metadata     jsonb       NOT NULL,
            content_hash text        NOT NULL,
            embedding    vector({settings.dimension}) NOT NULL,
            UNIQUE (namespace, document_id, chunk_index),
            FOREIGN KEY (namespace, document_id)
                REFERENCES rag_documents (namespace, document_id) ON DELETE CASCADE
        )
        """
    )
    await conn.execute(
        f"""
        CREATE INDEX rag_chunks_embedding_hnsw ON rag_chunks
            USING hnsw (embedding vector_cosine_ops)
            WITH (m = {settings.hnsw_m}, ef_construction = {settings.hnsw_ef_construction})
        """
    )
    await conn.execute(
        "CREATE INDEX rag_chunks_metadata_gin ON rag_chunks USING gin (metadata jsonb_path_ops)"
    )


async def _create_keyword_index(conn: asyncpg.Connection, settings: SchemaSettings) -> None:
    """The BM25 keyword leg: postings per chunk, corpus statistics per namespace.

    One posting per (chunk, lexeme) with the term frequency, and the chunk's
    length copied in, so scoring a query reads nothing but the primary key's
    index (an index-only scan). Document frequencies are counted from the
    postings at query time, so they cannot drift; the chunk count and total
    length per namespace, which would need a scan of every chunk, are kept in
    rag_keyword_stats by the same transaction that adds or removes chunks.
    rag_documents.keyword_length (the sum over its chunks) says how much to
    take away when a document goes.
    """
    await conn.execute(
        """
        ALTER TABLE rag_documents ADD COLUMN keyword_length bigint NOT NULL DEFAULT 0;

        CREATE TABLE rag_postings (
            chunk_id     bigint NOT NULL REFERENCES rag_chunks (id) ON DELETE CASCADE,
            namespace    text   NOT NULL,
            lexeme       text   NOT NULL,
            tf           int    NOT NULL,
            chunk_length int    NOT NULL,
            PRIMARY KEY (namespace, lexeme, chunk_id) INCLUDE (tf, chunk_length)
        );
        -- For the cascade from rag_chunks.
        CREATE INDEX rag_postings_chunk ON rag_postings (chunk_id);

        CREATE TABLE rag_keyword_stats (
            namespace    text   PRIMARY KEY,
            chunks       bigint NOT NULL,
            total_length bigint NOT NULL
        );

        CREATE TABLE rag_settings (
            name  text PRIMARY KEY,
            value text NOT NULL
        );
        """
    )
    await conn.execute(
        "INSERT INTO rag_settings (name, value) VALUES ('text_search_config', $1::regconfig::text)",
        settings.text_search_config,
    )
    await _index_stored_chunks(conn, settings.text_search_config)


async def _index_stored_chunks(conn: asyncpg.Connection, text_search_config: str) -> None:
    """Index chunks stored before the keyword leg existed, as ChunkStore.upsert indexes new ones."""
    await conn.execute(
        """
        INSERT INTO rag_postings (chunk_id, namespace, lexeme, tf, chunk_length)
        SELECT c.id, c.namespace, t.lexeme, cardinality(t.positions),
               sum(cardinality(t.positions)) OVER (PARTITION BY c.id)
        FROM rag_chunks c
        JOIN rag_documents d ON d.namespace = c.namespace AND d.document_id = c.document_id
        CROSS JOIN unnest(to_tsvector($1::regconfig, d.title || ' ' || c.text)) AS t
        """,
        text_search_config,
    )
    await conn.execute(
        """
        UPDATE rag_documents d SET keyword_length = p.length
        FROM (
            SELECT c.namespace, c.document_id, sum(p.tf) AS length
            FROM rag_postings p JOIN rag_chunks c ON c.id = p.chunk_id
            GROUP BY c.namespace, c.document_id
        ) p
        WHERE d.namespace = p.namespace AND d.document_id = p.document_id
        """
    )
    await conn.execute(
        """
        INSERT INTO rag_keyword_stats (namespace, chunks, total_length)
        SELECT namespace, sum(chunk_count), sum(keyword_length) FROM rag_documents GROUP BY namespace
        """
    )


# A chunk's pages in its source file; '{}' for chunks stored before pages were
# kept, as for sources without pages. A constant default adds the column
# without rewriting the table.
_ADD_CHUNK_PAGES = "ALTER TABLE rag_chunks ADD COLUMN pages int[] NOT NULL DEFAULT '{}'"

# The index version lives on the namespace's statistics row because every
# write that changes what a search can find already updates that row, last in
# its transaction: the bump costs no extra statement or lock, and the row lock
# held until commit orders the bumps as the commits. Namespaces written before
# versions were kept start at 1, so they do not look never written (0).
_ADD_INDEX_VERSION = """
ALTER TABLE rag_keyword_stats ADD COLUMN version bigint NOT NULL DEFAULT 0;
UPDATE rag_keyword_stats SET version = 1;
"""

# Documents whose last ingestion failed. Not tied to rag_documents: a document
# that never ingested has a failure and no stored version, and one that failed
# to re-ingest keeps its older stored version alongside the failure.
_CREATE_DOCUMENT_FAILURES = """
CREATE TABLE rag_document_failures (
    namespace   text        NOT NULL,
    document_id text        NOT NULL,
    title       text        NOT NULL DEFAULT '',
    reason      text        NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, document_id)
)
"""

# The keyword index in blocks (see keyword_index.py for the layout and
# keyword_search.py for the search it serves). Postings already stored stay in
# rag_postings, which the search keeps reading, until the converter has moved
# them: the migration itself is quick whatever the size of the database.
# toast_tuple_target keeps a block's arrays (about 2 KB) in the table's own
# pages; 8160 is the most PostgreSQL accepts for 8 KB pages.
_CREATE_KEYWORD_BLOCKS = """
CREATE TABLE rag_keyword_blocks (
    namespace  text     NOT NULL,
    id         bigint   GENERATED ALWAYS AS IDENTITY,
    lexeme     text     NOT NULL,
    postings   int      NOT NULL,
    max_tf     int      NOT NULL,
    min_length int      NOT NULL,
    chunk_ids  bigint[] NOT NULL,
    tfs        int[]    NOT NULL,
    lengths    int[]    NOT NULL,
    PRIMARY KEY (namespace, id)
) WITH (toast_tuple_target = 8160);
-- The headers a search reads, without touching the blocks.
CREATE INDEX rag_keyword_blocks_lexeme ON rag_keyword_blocks (namespace, lexeme)
    INCLUDE (id, postings, max_tf, min_length);
-- Which blocks hold a chunk: for deletes and re-ingests.
CREATE INDEX rag_keyword_blocks_chunks ON rag_keyword_blocks USING gin (chunk_ids);

-- Lexemes with more than one run of blocks, and how many (keyword_index.py).
CREATE TABLE rag_keyword_unmerged (
    namespace text NOT NULL,
    lexeme    text NOT NULL,
    runs      int  NOT NULL,
    PRIMARY KEY (namespace, lexeme)
);

-- Each compacted chunk's lexemes and length (chunk_id first: the cascade
-- from rag_chunks looks rows up by it).
CREATE TABLE rag_chunk_lexemes (
    namespace text     NOT NULL,
    chunk_id  bigint   NOT NULL REFERENCES rag_chunks (id) ON DELETE CASCADE,
    lexemes   tsvector NOT NULL,
    length    int      NOT NULL,
    PRIMARY KEY (chunk_id, namespace)
);

-- The same for chunks whose postings are not in blocks yet: the compactor's
-- queue, which moves each row to rag_chunk_lexemes as it compacts it, so
-- neither table is rewritten. Its GIN index finds the fresh chunks holding a
-- query's lexemes; it holds only what waits (a second or so of ingestion).
CREATE TABLE rag_keyword_fresh (
    namespace text     NOT NULL,
    chunk_id  bigint   NOT NULL REFERENCES rag_chunks (id) ON DELETE CASCADE,
    lexemes   tsvector NOT NULL,
    length    int      NOT NULL,
    PRIMARY KEY (chunk_id, namespace)
);
CREATE INDEX rag_keyword_fresh_lexemes ON rag_keyword_fresh USING gin (tsvector_to_array(lexemes));
CREATE INDEX rag_keyword_fresh_queue ON rag_keyword_fresh (namespace, chunk_id);
"""

# Every key holds the namespace, so the tables can be distributed by it
# (Citus: co-located shards, each statement routed to one; docs/scaling.md).
# rag_chunks' key was its id alone; the tables that point at chunks now
# point at (namespace, id). NOT VALID: the rows are known to match (they were
# checked against the id alone), so start-up need not scan them again.
_NAMESPACE_IN_EVERY_KEY = """
ALTER TABLE rag_chunks DROP CONSTRAINT rag_chunks_pkey CASCADE;
ALTER TABLE rag_chunks ADD PRIMARY KEY (namespace, id);
ALTER TABLE rag_postings ADD FOREIGN KEY (namespace, chunk_id)
    REFERENCES rag_chunks (namespace, id) ON DELETE CASCADE NOT VALID;
ALTER TABLE rag_chunk_lexemes ADD FOREIGN KEY (namespace, chunk_id)
    REFERENCES rag_chunks (namespace, id) ON DELETE CASCADE NOT VALID;
ALTER TABLE rag_keyword_fresh ADD FOREIGN KEY (namespace, chunk_id)
    REFERENCES rag_chunks (namespace, id) ON DELETE CASCADE NOT VALID;
"""

# Relevance feedback (store/feedback.py): a submission and its judgments, in
# the order given. Not tied to rag_documents, so feedback outlives the
# documents it judges. The namespace leads every key, as in every table.
# listed_bytes is what the submission weighs in a listing, so a page can be
# bounded in bytes before its text is read.
_CREATE_FEEDBACK = """
CREATE TABLE rag_feedback (
    namespace     text        NOT NULL,
    feedback_id   bigint      GENERATED ALWAYS AS IDENTITY,
    question      text        NOT NULL,
    answer_rating text        CHECK (answer_rating IN ('good', 'bad')),
    listed_bytes  int         NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, feedback_id)
);

CREATE TABLE rag_feedback_items (
    namespace   text   NOT NULL,
    feedback_id bigint NOT NULL,
    item_index  int    NOT NULL,
    document_id text   NOT NULL,
    chunk_index int    NOT NULL CHECK (chunk_index >= 0),
    label       text   NOT NULL CHECK (label IN ('relevant', 'not_relevant')),
    PRIMARY KEY (namespace, feedback_id, item_index),
    FOREIGN KEY (namespace, feedback_id) REFERENCES rag_feedback (namespace, feedback_id) ON DELETE CASCADE
);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "documents and chunks, with HNSW and metadata indexes", _create_documents_and_chunks),
    Migration(2, "BM25 keyword index: postings and per-namespace statistics", _create_keyword_index),
    Migration(3, "chunk pages", _ADD_CHUNK_PAGES),
    Migration(4, "per-namespace index version", _ADD_INDEX_VERSION),
    Migration(5, "failure records of documents that could not be ingested", _CREATE_DOCUMENT_FAILURES),
    Migration(6, "keyword index in blocks of postings, and each chunk's lexemes", _CREATE_KEYWORD_BLOCKS),
    Migration(7, "the namespace in every key, for sharding by namespace", _NAMESPACE_IN_EVERY_KEY),
    Migration(8, "relevance feedback on search results", _CREATE_FEEDBACK),
)


async def migrate(
    conn: asyncpg.Connection,
    *,
    dimension: int,
    hnsw_m: int,
    hnsw_ef_construction: int,
    text_search_config: str = DEFAULT_TEXT_SEARCH_CONFIG,
    up_to: int | None = None,
) -> None:
    """Bring the schema up to date, or raise RuntimeError if the stored schema does not fit the settings.

    `up_to` stops after that migration: for tests of upgrades from an older schema.
    """
    settings = SchemaSettings(dimension, hnsw_m, hnsw_ef_construction, text_search_config)
    await _require_server_version(conn)
    await _require_vector_extension(conn)
    await _require_text_search_config(conn, text_search_config)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await _refuse_a_second_set_of_tables(conn)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS rag_schema_migrations (
                version    int         PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        await _check_dimension(conn, settings.dimension)
        await _check_stored_text_search_config(conn, settings.text_search_config)
        applied = {row["version"] for row in await conn.fetch("SELECT version FROM rag_schema_migrations")}
        for migration in sorted(MIGRATIONS, key=lambda m: m.version):
            if up_to is not None and migration.version > up_to:
                break
            if migration.version not in applied:
                await _apply(conn, migration, settings)


async def _apply(conn: asyncpg.Connection, migration: Migration, settings: SchemaSettings) -> None:
    if isinstance(migration.apply, str):
        await conn.execute(migration.apply)
    else:
        await migration.apply(conn, settings)
    await conn.execute("INSERT INTO rag_schema_migrations (version) VALUES ($1)", migration.version)


async def _require_server_version(conn: asyncpg.Connection) -> None:
    version_num = int(await conn.fetchval("SELECT current_setting('server_version_num')"))
    if version_num < MIN_SERVER_VERSION_NUM:
        raise RuntimeError(f"the retriever needs PostgreSQL 16 or later; the server is {version_num}")


async def _require_vector_extension(conn: asyncpg.Connection) -> None:
    """pgvector is not a trusted extension: creating it is the administrator's part of the set-up."""
    if await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'") is None:
        database = await conn.fetchval("SELECT current_database()")
        raise RuntimeError(
            f"the vector extension is not installed in database {database!r}; run `{SETUP_COMMAND}` "
            "once with an administrator's connection (RETRIEVER_ADMIN_DATABASE_URL): it installs the "
            f"extension and creates the role {RETRIEVER_ROLE} for the retriever to connect as"
        )


async def _refuse_a_second_set_of_tables(conn: asyncpg.Connection) -> None:
    """Refuse to create empty tables beside the ones the setup gave to the retriever's role.

    A connection as another role (an administrator's, say) does not have the
    role's schema on its search path: migrating would start an empty store.
    """
    if await conn.fetchval("SELECT to_regclass('rag_schema_migrations')") is not None:
        return
    if await conn.fetchval("SELECT to_regclass($1)", f"{RETRIEVER_SCHEMA}.rag_schema_migrations") is None:
        return
    user = await conn.fetchval("SELECT current_user")
    raise RuntimeError(
        f"the retriever's tables are in schema {RETRIEVER_SCHEMA}, which `{SETUP_COMMAND}` gave to the "
        f"role {RETRIEVER_ROLE}, but this connection is {user!r}; connect as {RETRIEVER_ROLE}"
    )


async def _check_dimension(conn: asyncpg.Connection, dimension: int) -> None:
    """Refuse to start against chunks stored with another embedding dimension.

    Checked before any migration runs, so a mismatched start-up changes nothing.
    For pgvector's `vector(n)` the column's type modifier is n.
    """
    row = await conn.fetchrow(
        """
        SELECT a.atttypmod, format_type(a.atttypid, a.atttypmod) AS type
        FROM pg_attribute a
        WHERE a.attrelid = to_regclass('rag_chunks') AND a.attname = 'embedding' AND NOT a.attisdropped
        """
    )
    if row is not None and row["atttypmod"] != dimension:
        raise RuntimeError(
            f"rag_chunks.embedding is stored as {row['type']} but the retriever is configured for "
            f"dimension {dimension}; use a database made for this dimension, or re-create the tables "
            "and re-ingest the documents"
        )


async def _require_text_search_config(conn: asyncpg.Connection, name: str) -> None:
    if not await conn.fetchval("SELECT pg_input_is_valid($1, 'regconfig')", name):
        known = await conn.fetchval("SELECT string_agg(cfgname, ', ' ORDER BY cfgname) FROM pg_ts_config")
        raise RuntimeError(
            f"text search configuration {name!r} does not exist in this database; it has: {known}"
        )


async def _check_stored_text_search_config(conn: asyncpg.Connection, name: str) -> None:
    """Refuse a configuration other than the one the stored keyword index was built with."""
    if await conn.fetchval("SELECT to_regclass('rag_settings')") is None:
        return
    stored, configured = await conn.fetchrow(
        "SELECT (SELECT value FROM rag_settings WHERE name = 'text_search_config'), $1::regconfig::text",
        name,
    )
    if stored != configured:
        raise RuntimeError(
            f"the keyword index was built with text search configuration {stored!r} but the retriever "
            f"is configured with {configured!r}; configure {stored!r}, or re-create the tables and "
            "re-ingest the documents"
        )


def _require_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")
