"""The keyword index's writes: each document's postings, their removal, compaction and conversion.

Layout (migration 6, schema.py):
- `rag_keyword_blocks`: one row per block of up to BLOCK_SIZE postings of one
  lexeme, as three arrays (chunk ids, tfs, chunk lengths) with the block's
  posting count, largest tf and shortest length, the header the search bounds
  it by (keyword_search.py). About 16 bytes a posting where a row per posting
  with its indexes took 150.
- `rag_chunk_lexemes`: each chunk's own lexemes (its tsvector) and length, for
  the search's random access.
- `rag_keyword_fresh`: the same for chunks whose postings are not in blocks
  yet, found through a GIN index over their lexemes.

Writes stay as cheap as before. An upsert writes, in its own transaction, its
chunks' lexemes into rag_keyword_fresh: that row is the whole of the chunk's
share of the index until the compactor, run in the background by every
retriever replica, moves its postings into blocks and the row into
rag_chunk_lexemes (COMPACT_SQL). A search reads fresh chunks' postings whole
and blocks by their bounds. Deletes and
re-ingests take the chunks out of every block that holds them (found by a GIN
index over the chunk ids); their lexemes go by cascade. Compaction changes no
score and no statistic, so it bumps no index version.

Compaction and removal must not interleave per namespace: a compaction that
commits while a delete runs could write the deleted chunks' postings into a
block the delete's snapshot cannot see. Deletes take the namespace's lock
shared (they do not wait for each other); the compactor tries it exclusive and
skips the namespace when a delete holds it. New documents need no lock: the
compactor only ever sees committed chunks.

A database written before blocks existed keeps its postings in
`rag_postings` (one row per posting). The search reads those as one-posting
blocks, so results stay exact throughout, while the converter moves them into
blocks and writes the chunks' lexemes, a batch per transaction, logging its
progress: start-up does not wait for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)

# Postings per block. A block's row (three arrays of 128) is about 2 KB and is
# kept in the table's own pages (toast_tuple_target in the migration), so
# reading a block is one page read, not a TOAST lookup.
BLOCK_SIZE = 128

# Fresh chunks compacted and postings merged per transaction, and legacy
# postings or chunks converted per conversion transaction: each holds its
# namespace's lock (which deletes wait for) for a second or two, far from the
# statement timeout.
COMPACTION_BATCH_CHUNKS = 5000
MERGE_BATCH_POSTINGS = 300_000
# Dead block rows (left by compaction's rewrites) that make the compactor
# vacuum the blocks table, once they are also a quarter of the live rows.
VACUUM_AT_DEAD_ROWS = 10_000
_BLOCKS_CHURN_SQL = """
SELECT coalesce(n_dead_tup, 0) AS dead, coalesce(n_live_tup, 0) AS live
FROM pg_stat_user_tables WHERE relid = 'rag_keyword_blocks'::regclass
"""

# Runs of one lexeme that make it worth merging (MERGE_SQL).
MERGE_AT_RUNS = 4
CONVERSION_BATCH_POSTINGS = 50_000
CONVERSION_BATCH_CHUNKS = 5000

# The namespace lock's key space: hashtextextended(namespace, this seed).
_LOCK_SEED = 0x6B77_626C  # "kwbl"

LOCK_NAMESPACE_SHARED_SQL = "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, $2))"
_TRY_LOCK_NAMESPACE_SQL = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, $2))"

# The chunks' lexemes, into the compactor's queue, in one statement. $1 namespace, $2 document id,
# $3 text search config, $4 title. Returns the document's keyword length (the
# sum of its chunks' lengths).
INDEX_DOCUMENT_SQL = """
WITH chunk_lexemes AS (
    INSERT INTO rag_keyword_fresh (namespace, chunk_id, lexemes, length)
    SELECT c.namespace, c.id, v.lexemes,
           (SELECT coalesce(sum(cardinality(t.positions)), 0) FROM unnest(v.lexemes) AS t)
    FROM rag_chunks c
    CROSS JOIN LATERAL (SELECT to_tsvector($3::regconfig, $4 || ' ' || c.text) AS lexemes) AS v
    WHERE c.namespace = $1 AND c.document_id = $2
    RETURNING length
)
SELECT coalesce(sum(length), 0)::bigint AS length FROM chunk_lexemes
"""

# The namespace's chunks of these documents, whose postings are about to go.
CHUNKS_OF_DOCUMENTS_SQL = """
SELECT coalesce(array_agg(c.id), '{}') FROM rag_chunks c
WHERE c.namespace = $1 AND c.document_id = ANY ($2::text[])
"""

# Take chunks ($2) out of every block holding them: blocks left empty go, the
# others keep their order and get their header recomputed. $2 is bound as a
# constant (the caller plans this statement per call), so `<> ALL` is a hash
# lookup however many chunks go.
_REMOVE_EMPTIED_SQL = """
DELETE FROM rag_keyword_blocks b
WHERE b.namespace = $1 AND b.chunk_ids && $2::bigint[] AND b.chunk_ids <@ $2::bigint[]
"""
_REMOVE_FROM_BLOCKS_SQL = """
UPDATE rag_keyword_blocks b
SET (postings, max_tf, min_length, chunk_ids, tfs, lengths) = (
    SELECT count(*), max(u.tf), min(u.length),
           array_agg(u.chunk_id ORDER BY u.position), array_agg(u.tf ORDER BY u.position),
           array_agg(u.length ORDER BY u.position)
    FROM unnest(b.chunk_ids, b.tfs, b.lengths) WITH ORDINALITY AS u (chunk_id, tf, length, position)
    WHERE u.chunk_id <> ALL ($2::bigint[])
)
WHERE b.namespace = $1 AND b.chunk_ids && $2::bigint[]
"""

# Namespaces with fresh chunks, lexemes whose runs wait to be merged, or
# legacy postings (and chunks without lexemes).
_PENDING_NAMESPACES_SQL = f"""
SELECT namespace FROM (
    SELECT DISTINCT namespace FROM rag_keyword_fresh
    UNION
    SELECT DISTINCT namespace FROM rag_keyword_unmerged WHERE runs >= {MERGE_AT_RUNS}
    UNION
    SELECT namespace FROM rag_keyword_stats s
    WHERE EXISTS (SELECT 1 FROM rag_postings p WHERE p.namespace = s.namespace)
) AS n
ORDER BY namespace
"""

# Compact up to $2 fresh chunks (oldest first). Each compaction of a lexeme
# writes a *run*: postings sorted by tf descending, then length, then chunk id,
# cut into blocks of BLOCK_SIZE. A lexeme's fresh postings become a new run
# beside its earlier ones, and rag_keyword_unmerged counts its runs; once the
# fresh postings are as many as those already in blocks, all its runs are
# merged into one instead. Appending keeps compaction cheap while documents
# stream in, and the doubling rule bounds how often a posting is rewritten as
# its lexeme grows; merging matters because every run's first block has a
# high bound that the search must read past, so MERGE_SQL merges a lexeme's
# runs once there are MERGE_AT_RUNS of them and no fresh chunk waits. All
# CTEs read one snapshot: chunks committed meanwhile wait for the next round.
# Returns the postings written.
_COMPACT_SQL = """
WITH picked AS (
    DELETE FROM rag_keyword_fresh f
    WHERE f.namespace = $1 AND f.chunk_id IN (
        SELECT p.chunk_id FROM rag_keyword_fresh p WHERE p.namespace = $1 ORDER BY p.chunk_id LIMIT $2
    )
    RETURNING f.namespace, f.chunk_id, f.lexemes, f.length
),
settled AS (
    INSERT INTO rag_chunk_lexemes (namespace, chunk_id, lexemes, length)
    SELECT namespace, chunk_id, lexemes, length FROM picked
    RETURNING chunk_id, lexemes, length
),
fresh_postings AS MATERIALIZED (
    SELECT t.lexeme, s.chunk_id, cardinality(t.positions) AS tf, s.length
    FROM settled s CROSS JOIN unnest(s.lexemes) AS t
),
sizes AS (
    SELECT f.lexeme,
           count(*) >= (SELECT coalesce(sum(b.postings), 0) FROM rag_keyword_blocks b
                        WHERE b.namespace = $1 AND b.lexeme = f.lexeme) AS whole
    FROM fresh_postings f
    GROUP BY f.lexeme
),
moved_blocks AS (
    DELETE FROM rag_keyword_blocks b
    USING sizes s
    WHERE b.namespace = $1 AND b.lexeme = s.lexeme AND s.whole
    RETURNING b.lexeme, b.chunk_ids, b.tfs, b.lengths
),
merged AS (
    DELETE FROM rag_keyword_unmerged u
    USING sizes s
    WHERE u.namespace = $1 AND u.lexeme = s.lexeme AND s.whole
),
noted AS (
    INSERT INTO rag_keyword_unmerged AS u (namespace, lexeme, runs)
    SELECT $1, s.lexeme, 2 FROM sizes s
    WHERE NOT s.whole
    ON CONFLICT (namespace, lexeme) DO UPDATE SET runs = u.runs + 1
),
postings AS (
    SELECT lexeme, chunk_id, tf, length FROM fresh_postings
    UNION ALL
    SELECT m.lexeme, u.chunk_id, u.tf, u.length
    FROM moved_blocks m CROSS JOIN unnest(m.chunk_ids, m.tfs, m.lengths) AS u (chunk_id, tf, length)
),
{blocks}
"""
# Merge all the runs of lexemes that have at least $3 into one each, most
# runs first, as many lexemes as fit in $2 postings (at least one).
_MERGE_SQL = """
WITH candidates AS (
    SELECT l.lexeme, l.runs,
           (SELECT sum(b.postings) FROM rag_keyword_blocks b WHERE b.namespace = $1 AND b.lexeme = l.lexeme)
               AS postings
    FROM rag_keyword_unmerged l
    WHERE l.namespace = $1 AND l.runs >= $3
    ORDER BY l.runs DESC, l.lexeme
    LIMIT 1000
),
chosen AS (
    SELECT c.lexeme FROM (
        SELECT lexeme, sum(postings) OVER (ORDER BY runs DESC, lexeme) AS running,
               row_number() OVER (ORDER BY runs DESC, lexeme) AS place
        FROM candidates
    ) AS c
    WHERE c.running <= $2 OR c.place = 1
),
lexemes AS (
    DELETE FROM rag_keyword_unmerged u
    WHERE u.namespace = $1 AND u.lexeme IN (SELECT lexeme FROM chosen)
    RETURNING u.lexeme
),
moved AS (
    DELETE FROM rag_keyword_blocks b
    WHERE b.namespace = $1 AND b.lexeme IN (SELECT lexeme FROM lexemes)
    RETURNING b.lexeme, b.chunk_ids, b.tfs, b.lengths
),
postings AS (
    SELECT m.lexeme, u.chunk_id, u.tf, u.length
    FROM moved AS m CROSS JOIN unnest(m.chunk_ids, m.tfs, m.lengths) AS u (chunk_id, tf, length)
),
{blocks}
"""
_BLOCKS_FROM_POSTINGS_SQL = f"""
numbered AS (
    SELECT p.*, (row_number() OVER (PARTITION BY p.lexeme ORDER BY p.tf DESC, p.length, p.chunk_id) - 1)
                / {BLOCK_SIZE} AS block
    FROM postings p
),
written AS (
    INSERT INTO rag_keyword_blocks (namespace, lexeme, postings, max_tf, min_length, chunk_ids, tfs, lengths)
    SELECT $1, n.lexeme, count(*), max(n.tf), min(n.length),
           array_agg(n.chunk_id ORDER BY n.tf DESC, n.length, n.chunk_id),
           array_agg(n.tf ORDER BY n.tf DESC, n.length, n.chunk_id),
           array_agg(n.length ORDER BY n.tf DESC, n.length, n.chunk_id)
    FROM numbered n
    GROUP BY n.lexeme, n.block
    RETURNING postings
)
SELECT coalesce(sum(postings), 0)::bigint FROM written
"""
COMPACT_SQL = _COMPACT_SQL.format(blocks=_BLOCKS_FROM_POSTINGS_SQL)
MERGE_SQL = _MERGE_SQL.format(blocks=_BLOCKS_FROM_POSTINGS_SQL)

# Move up to $2 legacy postings (whole lexemes where they fit) into compacted blocks.
CONVERT_POSTINGS_SQL = (
    """
WITH picked AS (
    SELECT p.lexeme, p.chunk_id FROM rag_postings p
    WHERE p.namespace = $1
    ORDER BY p.lexeme, p.chunk_id
    LIMIT $2
),
postings AS (
    DELETE FROM rag_postings p
    USING picked
    WHERE p.namespace = $1 AND p.lexeme = picked.lexeme AND p.chunk_id = picked.chunk_id
    RETURNING p.lexeme, p.chunk_id, p.tf, p.chunk_length AS length
),"""
    + _BLOCKS_FROM_POSTINGS_SQL
)

# Write the lexemes of up to $3 chunks that have none (stored before blocks):
# not into the queue, since their postings are in rag_postings, which
# CONVERT_POSTINGS_SQL moves.
CONVERT_CHUNKS_SQL = """
WITH missing AS (
    SELECT c.id, c.text, d.title FROM rag_chunks c
    JOIN rag_documents d ON d.namespace = c.namespace AND d.document_id = c.document_id
    WHERE c.namespace = $1
      AND NOT EXISTS (SELECT 1 FROM rag_chunk_lexemes l WHERE l.namespace = $1 AND l.chunk_id = c.id)
      AND NOT EXISTS (SELECT 1 FROM rag_keyword_fresh f WHERE f.namespace = $1 AND f.chunk_id = c.id)
    ORDER BY c.id
    LIMIT $3
),
written AS (
    INSERT INTO rag_chunk_lexemes (namespace, chunk_id, lexemes, length)
    SELECT $1, m.id, v.lexemes,
           (SELECT coalesce(sum(cardinality(t.positions)), 0) FROM unnest(v.lexemes) AS t)
    FROM missing m
    CROSS JOIN LATERAL (SELECT to_tsvector($2::regconfig, m.title || ' ' || m.text) AS lexemes) AS v
    RETURNING 1
)
SELECT count(*) FROM written
"""


@dataclass(frozen=True, slots=True)
class MaintenanceRound:
    """What one pass over the namespaces did."""

    postings_compacted: int = 0
    postings_converted: int = 0
    chunks_converted: int = 0
    # Namespaces skipped because a delete held their lock.
    namespaces_busy: int = 0

    @property
    def worked(self) -> bool:
        return bool(self.postings_compacted or self.postings_converted or self.chunks_converted)


async def remove_chunks(conn: asyncpg.Connection, namespace: str, chunk_ids: Sequence[int]) -> None:
    """Take chunks out of the blocks, in the caller's transaction, under the namespace's shared lock.

    Call before the chunks themselves are deleted (their lexemes go with them
    by cascade). The plan is made for this call's chunk ids, so `<> ALL` over
    them is hashed; a generic plan would compare every posting with each id.
    """
    await conn.execute(LOCK_NAMESPACE_SHARED_SQL, namespace, _LOCK_SEED)
    if not chunk_ids:
        return
    await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
    ids = list(chunk_ids)
    await conn.execute(_REMOVE_EMPTIED_SQL, namespace, ids)
    await conn.execute(_REMOVE_FROM_BLOCKS_SQL, namespace, ids)


async def maintain(conn: asyncpg.Connection, text_search_config: str) -> MaintenanceRound:
    """One batch of compaction or conversion for every namespace that has some waiting.

    Each namespace's batch is its own transaction, under its lock taken
    exclusive; a namespace whose lock a delete holds is left for the next
    round.
    """
    compacted = converted = chunks = busy = 0
    for row in await conn.fetch(_PENDING_NAMESPACES_SQL):
        namespace = row["namespace"]
        async with conn.transaction():
            if not await conn.fetchval(_TRY_LOCK_NAMESPACE_SQL, namespace, _LOCK_SEED):
                busy += 1
                continue
            moved_chunks = await conn.fetchval(
                CONVERT_CHUNKS_SQL, namespace, text_search_config, CONVERSION_BATCH_CHUNKS
            )
            moved_postings = await conn.fetchval(CONVERT_POSTINGS_SQL, namespace, CONVERSION_BATCH_POSTINGS)
            written = await conn.fetchval(COMPACT_SQL, namespace, COMPACTION_BATCH_CHUNKS)
            if not written:
                # Nothing fresh: time to merge the runs appended meanwhile.
                written = await conn.fetchval(MERGE_SQL, namespace, MERGE_BATCH_POSTINGS, MERGE_AT_RUNS)
            compacted += written
        if moved_chunks or moved_postings:
            left = await conn.fetchval("SELECT count(*) FROM rag_postings WHERE namespace = $1", namespace)
            log.info(
                "converting the keyword index of namespace %r: %d postings moved into blocks and %d chunks' "
                "lexemes written in this batch, %d postings left",
                namespace,
                moved_postings,
                moved_chunks,
                left,
            )
        converted += moved_postings
        chunks += moved_chunks
    if compacted or converted:
        await _vacuum_blocks_if_churned(conn)
    return MaintenanceRound(compacted, converted, chunks, busy)


async def _vacuum_blocks_if_churned(conn: asyncpg.Connection) -> None:
    """VACUUM the blocks once compaction has left dead rows worth a quarter of the live ones.

    Compaction rewrites blocks (merges, appends that outgrow a lexeme's runs);
    vacuumed promptly, the space of the old rows goes to the new ones and the
    table stays near the size of what it holds, instead of growing by every
    rewrite until autovacuum comes round on busy cores. Without the statement
    timeout: a large table takes longer to vacuum than a call may run.
    """
    dead, live = await conn.fetchrow(_BLOCKS_CHURN_SQL)
    if dead < VACUUM_AT_DEAD_ROWS or dead * 4 < live:
        return
    await conn.execute("SET statement_timeout = 0")
    try:
        await conn.execute("VACUUM rag_keyword_blocks")
    finally:
        await conn.execute("RESET statement_timeout")


async def maintain_until_done(conn: asyncpg.Connection, text_search_config: str) -> MaintenanceRound:
    """Compact and convert until nothing waits (tests, benchmarks, and after a bulk load)."""
    total = MaintenanceRound()
    while True:
        done = await maintain(conn, text_search_config)
        total = MaintenanceRound(
            total.postings_compacted + done.postings_compacted,
            total.postings_converted + done.postings_converted,
            total.chunks_converted + done.chunks_converted,
            total.namespaces_busy + done.namespaces_busy,
        )
        if not done.worked and not done.namespaces_busy:
            return total
