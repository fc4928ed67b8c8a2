"""Phase 4: ingests interrupted by a killed gateway or retriever, re-run, and compared with an
uninterrupted one, while a poller looks for partial documents."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import asyncpg
import grpc

from benchkit import rpc
from benchkit.output import log, verdict
from benchkit.stack import start_again
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from reliability_bench.documents import documents
from reliability_bench.load import channel
from reliability_bench.outages import kill
from reliability_bench.settings import Settings
from reliability_bench.table import Phase, Row, fmt_counts, status_columns

INGEST_DEADLINE_S = 120.0
POLL_S = 0.2
DOCUMENTS_PER_CALL = 25
CALLERS = 2
RERUN_PASSES = 10
RERUN_PAUSE_S = 0.5
# The share of the documents stored when the victim is killed.
KILL_AT = 0.4
REFERENCE_NAMESPACE = "reliability-ref"

CHUNKS_SQL = """
SELECT document_id, chunk_index, text, start_char, end_char, content_hash
FROM rag_chunks WHERE namespace = $1 ORDER BY document_id, chunk_index
"""
PARTIAL_SQL = """
SELECT d.document_id, d.chunk_count, count(c.id) AS stored
FROM rag_documents d LEFT JOIN rag_chunks c USING (namespace, document_id)
WHERE d.namespace = $1 GROUP BY d.document_id, d.chunk_count
"""
STORED_SQL = "SELECT count(*) FROM rag_documents WHERE namespace = $1"

# The stub's asyncio flavour exists only for the type checker, hence the quotes.
Gateway: TypeAlias = "gateway_pb2_grpc.GatewayServiceAsyncStub"
Batch = Sequence[gateway_pb2.Document]


@dataclass
class Snapshot:
    chunks: int
    documents: int
    chunk_hash: str
    listed: dict[str, tuple[str, int]]

    @property
    def summary(self) -> str:
        return f"{self.documents} docs, {self.chunks} chunks, {self.chunk_hash}"


async def snapshot(conn: asyncpg.Connection, gateway: Gateway, ns: str) -> Snapshot:
    rows = await conn.fetch(CHUNKS_SQL, ns)
    digest = hashlib.sha256()
    for row in rows:
        digest.update(repr(tuple(row.values())).encode())
    listed: dict[str, tuple[str, int]] = {}
    token = ""
    while True:
        reply = await gateway.ListDocuments(
            gateway_pb2.ListDocumentsRequest(namespace=ns, page_size=500, page_token=token), timeout=30
        )
        for info in reply.documents:
            listed[info.document_id] = (info.content_hash, info.chunk_count)
        token = reply.next_page_token
        if not token:
            break
    return Snapshot(len(rows), len({r["document_id"] for r in rows}), digest.hexdigest()[:16], listed)


@dataclass
class Poll:
    polls: int = 0
    partial: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def poll_partial(url: str, ns: str, final: dict[str, int], stop: asyncio.Event, poll: Poll) -> None:
    """Every POLL_S until `stop`: documents whose stored chunks differ from their row or final count."""
    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = await asyncpg.connect(url)
            rows = await conn.fetch(PARTIAL_SQL, ns)
            poll.polls += 1
            for row in rows:
                expected = final.get(row["document_id"])
                if row["stored"] != row["chunk_count"] or (
                    expected is not None and row["stored"] != expected
                ):
                    poll.partial.append(
                        f"{row['document_id']}: row {row['chunk_count']}, stored {row['stored']}, "
                        f"final {expected}"
                    )
        except (OSError, asyncpg.PostgresError) as error:
            poll.errors[type(error).__name__] += 1
            conn = None
        await asyncio.sleep(POLL_S)
    if conn is not None:
        await conn.close()


def _batches(docs: Batch) -> list[Batch]:
    return [docs[i : i + DOCUMENTS_PER_CALL] for i in range(0, len(docs), DOCUMENTS_PER_CALL)]


async def ingest(gateway: Gateway, ns: str, docs: Batch) -> Counter[str]:
    """CALLERS callers, DOCUMENTS_PER_CALL documents a call; statuses of the calls (none retried here)."""
    statuses, _ = await ingest_batches(gateway, ns, _batches(docs))
    return statuses


async def ingest_until_done(gateway: Gateway, ns: str, docs: Batch) -> tuple[Counter[str], int]:
    """The whole ingest, then its failed calls again until none fails (RERUN_PASSES at most)."""
    statuses, failed = await ingest_batches(gateway, ns, _batches(docs))
    passes = 1
    while failed and passes < RERUN_PASSES:
        await asyncio.sleep(RERUN_PAUSE_S)
        more, failed = await ingest_batches(gateway, ns, failed)
        statuses += more
        passes += 1
    return statuses, passes


async def ingest_batches(
    gateway: Gateway, ns: str, batches: Sequence[Batch]
) -> tuple[Counter[str], list[Batch]]:
    statuses: Counter[str] = Counter()
    failed: list[Batch] = []
    queue: asyncio.Queue[Batch] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def caller() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            try:
                reply = await gateway.IngestDocuments(
                    gateway_pb2.IngestDocumentsRequest(namespace=ns, documents=list(batch)),
                    timeout=INGEST_DEADLINE_S,
                )
                document_errors = [r for r in reply.results if r.error]
                statuses["OK, document errors" if document_errors else "OK"] += 1
            except grpc.aio.AioRpcError as error:
                statuses[rpc.status_name(error)] += 1
                failed.append(batch)

    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return statuses, failed


async def _until_stored(conn: asyncpg.Connection, ns: str, count: float, task: asyncio.Task[object]) -> None:
    """Return once `count` documents of `ns` are stored, or `task` is done."""
    while not task.done():
        if await conn.fetchval(STORED_SQL, ns) >= count:
            return
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Reference:
    """The uninterrupted ingest's outcome, which every interrupted one must reach."""

    snapshot: Snapshot
    row: Row

    @property
    def final_counts(self) -> dict[str, int]:
        return {doc_id: count for doc_id, (_, count) in self.snapshot.listed.items()}


async def _reference(conn: asyncpg.Connection, gateway: Gateway, docs: Batch) -> Reference:
    started = time.monotonic()
    statuses = await ingest(gateway, REFERENCE_NAMESPACE, docs)
    seconds = time.monotonic() - started
    reference = await snapshot(conn, gateway, REFERENCE_NAMESPACE)
    log(f"  reference ingest: {seconds:.1f} s, {reference.chunks} chunks")
    row = Row(
        "uninterrupted (reference)",
        *status_columns(statuses),
        recovery=f"{seconds:.1f} s",
        check=reference.summary,
        verdict=verdict(reference.documents == len(docs) and set(statuses) == {"OK"}),
    )
    return Reference(reference, row)


async def _interrupted(
    stack: Stack, conn: asyncpg.Connection, gateway: Gateway, docs: Batch, victim: str, reference: Reference
) -> tuple[list[Row], list[str]]:
    """The ingest with `victim` killed at KILL_AT of it and restarted, then re-run until every call is OK."""
    ns = f"reliability-kill-{victim}"
    stop = asyncio.Event()
    poll = Poll()
    poller = asyncio.create_task(
        poll_partial(stack.database_url_in_use, ns, reference.final_counts, stop, poll)
    )
    first = asyncio.create_task(ingest(gateway, ns, docs))
    # Kill once KILL_AT of the documents are stored (or the first ingest is over).
    await _until_stored(conn, ns, len(docs) * KILL_AT, first)
    stored_at_kill = await conn.fetchval(STORED_SQL, ns)
    await kill(stack, victim)
    first_statuses = await first
    await start_again(stack, victim, stack.service_environment())
    stored_after = await conn.fetchval(STORED_SQL, ns)
    started = time.monotonic()
    second_statuses, passes = await ingest_until_done(gateway, ns, docs)
    rerun_s = time.monotonic() - started
    stop.set()
    await poller
    got = await snapshot(conn, gateway, ns)
    expected = reference.snapshot
    same = (
        got.chunk_hash == expected.chunk_hash
        and got.chunks == expected.chunks
        and got.listed == expected.listed
    )
    rows = [
        Row(
            f"kill -9 {victim} mid-way",
            *status_columns(first_statuses),
            check=f"{stored_at_kill}..{stored_after} docs stored at the kill",
        ),
        Row(
            "  re-run until all OK",
            *status_columns(second_statuses),
            recovery=f"{rerun_s:.1f} s, {passes} pass{'es' if passes > 1 else ''}",
            check=f"{got.summary}; {'same' if same else 'DIFFERENT'}; "
            f"{len(poll.partial)} partial in {poll.polls} polls",
            verdict=verdict(same and not poll.partial),
        ),
    ]
    notes = []
    if poll.partial:
        notes.append(f"{victim}: partial documents seen: {poll.partial[:5]}")
    if poll.errors:
        notes.append(f"{victim}: poller errors {dict(poll.errors)}")
    log(f"  {victim}: {fmt_counts(first_statuses)}; re-run {rerun_s:.1f} s; same={same}")
    return rows, notes


async def phase_ingest(stack: Stack, s: Settings) -> Phase:
    docs = documents("doc", s.documents, seed=7)
    rows = []
    notes = []
    conn = await asyncpg.connect(stack.database_url_in_use)
    opened = channel(stack.gateway_target)
    try:
        gateway = gateway_pb2_grpc.GatewayServiceStub(opened)
        reference = await _reference(conn, gateway, docs)
        rows.append(reference.row)
        for victim in ("gateway", "retriever"):
            victim_rows, victim_notes = await _interrupted(stack, conn, gateway, docs, victim, reference)
            rows.extend(victim_rows)
            notes.extend(victim_notes)
    finally:
        await opened.close()
        await conn.close()
    notes.append(
        "check: documents and chunks in the namespace and a hash of its chunk set (id, index, text,"
        " offsets, content hash); 'same': equal to the reference, ListDocuments too"
    )
    return Phase(
        f"4. interrupted ingests of {len(docs)} short documents, "
        f"{CALLERS} callers x {DOCUMENTS_PER_CALL} a call",
        rows,
        notes,
    )
