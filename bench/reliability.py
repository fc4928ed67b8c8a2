"""Reliability of the whole stack under load, service kills, a PostgreSQL restart and interrupted ingests.

    python bench/reliability.py [--quick]

One Stack (embedded PostgreSQL in a temporary directory, the four services on
free loopback ports, default settings) serves every phase:

1. Load: CLIENTS concurrent clients (grpc.aio in this process, over CHANNELS
   channels configured as the CLI's: retry of UNAVAILABLE) mixing Ask, Search and
   one-document IngestDocuments for --load seconds. Every call has a deadline.
   Statuses per RPC, p50/p99 of the successful calls. Criterion: no status but
   OK and RESOURCE_EXHAUSTED.
2. Kill -9 each service in turn during the same load: SIGKILL, a second's
   outage, then Stack.start_service with the same environment and port.
   Statuses from the kill until the service is SERVING again, and the time from
   SERVING to the first successful call of each RPC started after it.
   Criterion: only OK and UNAVAILABLE during the outage, every RPC succeeds
   again within 5 s, no DEADLINE_EXCEEDED (a hung call).
3. PostgreSQL restart during the load: pg_ctl stop (fast mode: connections are
   terminated) through the pgserver handle, a second down, started again on the
   same data directory; no service restarted. Statuses while it is down and
   after, and the time from PostgreSQL ready to the first successful Search and
   Ask. Criterion: as for 2.
4. Interrupted ingests: --documents short synthetic documents ingested into a
   fresh namespace uninterrupted (the reference), then into two more with the
   gateway, then the retriever, SIGKILLed mid-way and restarted, and the same
   ingest run again. Each namespace's chunk set (document id, chunk index, text,
   offsets, content hash; hashed) and the gateway's ListDocuments (content hash,
   chunk count per document) must equal the reference's. While the ingests run,
   a poller reads the tables every POLL_S in one snapshot and flags any
   document whose stored chunks differ in number from its row's chunk_count or
   from its final count in the reference (a partial document).
5. Overload: OVERLOAD_CLIENTS clients, three times phase 1's, against the
   gateway restarted without a bound on calls in flight, then with
   GATEWAY_MAX_IN_FLIGHT at its default 64 and at 16. Criterion: only OK and RESOURCE_EXHAUSTED; the
   unbounded run shows what the bound prevents.

Prints a table per phase with PASS or MISS; exits 0 either way.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import numpy as np

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import DEFAULT_PORTS, SERVICES, Stack, free_port
from services.common.channel_config import service_config

CLIENTS = 50
CHANNELS = 5
DEADLINE_S = 10.0
INGEST_DEADLINE_S = 120.0
RECOVERY_TARGET_S = 5.0
POLL_S = 0.2
OUTAGE_S = 1.0
# Share of the load's calls per RPC.
MIX = (("Search", 0.5), ("Ask", 0.4), ("Ingest", 0.1))
WORDS = [
    "protein",
    "cell",
    "gene",
    "expression",
    "tumor",
    "immune",
    "receptor",
    "signal",
    "pathway",
    "mouse",
    "human",
    "clinical",
    "trial",
    "patients",
    "therapy",
    "dose",
    "risk",
    "cohort",
    "analysis",
    "model",
    "network",
    "energy",
    "climate",
    "carbon",
    "soil",
    "water",
    "river",
    "ocean",
    "ice",
    "temperature",
    "pressure",
    "material",
    "crystal",
    "surface",
    "catalyst",
    "reaction",
    "polymer",
    "battery",
    "light",
    "laser",
    "quantum",
    "electron",
    "magnetic",
    "field",
    "spin",
    "graph",
    "algorithm",
    "data",
    "learning",
    "memory",
    "neuron",
    "brain",
]
SEED_DOCUMENTS = 60
LOAD_NAMESPACE = "reliability-load"
# Defaults, but no embedding cache: the ingests of phase 4 send the same texts again.
SERVICE_ENV = {"EMBEDDER_CACHE_SIZE": "0"}


# Phase 5: clients beyond what the stack serves, against a gateway without a
# bound on calls in flight and one with a low bound.
OVERLOAD_CLIENTS = 150
OVERLOAD_LIMITS = (("no bound", 100_000), ("max in flight 64 (default)", 64), ("max in flight 16", 16))


@dataclass(frozen=True)
class Settings:
    load_s: float
    kill_window_s: float
    documents: int
    overload_s: float


FULL = Settings(load_s=60.0, kill_window_s=12.0, documents=1000, overload_s=30.0)
QUICK = Settings(load_s=15.0, kill_window_s=9.0, documents=200, overload_s=10.0)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _status(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        target, options=[("grpc.service_config", service_config()), ("grpc.enable_retries", 1)]
    )


# Synthetic documents


def _text(rng: random.Random, words: int) -> str:
    sentences = []
    left = words
    while left > 0:
        n = min(left, rng.randint(6, 16))
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
        left -= n
    return " ".join(sentences)


def documents(prefix: str, count: int, seed: int) -> list[gateway_pb2.Document]:
    """Short documents, most of one chunk, one in five of two or three (200-token chunks)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        words = rng.randint(200, 380) if rng.random() < 0.2 else rng.randint(15, 60)
        out.append(gateway_pb2.Document(id=f"{prefix}-{i:05d}", title=f"Doc {i}", text=_text(rng, words)))
    return out


# Load


@dataclass
class Call:
    rpc: str
    started: float
    ended: float
    status: str
    detail: str = ""


@dataclass
class Load:
    calls: list[Call] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def between(self, start: float, end: float) -> list[Call]:
        """Calls that overlapped [start, end]."""
        return [c for c in self.calls if c.started <= end and c.ended >= start]


async def _client(number: int, gateway: gateway_pb2_grpc.GatewayServiceStub, load: Load) -> None:
    rng = random.Random(number)
    rpcs = [name for name, _ in MIX]
    weights = [w for _, w in MIX]
    serial = 0
    while not load.stop.is_set():
        rpc = rng.choices(rpcs, weights)[0]
        query = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7)))
        started = time.monotonic()
        status = "OK"
        detail = ""
        pause_s = 0.0
        try:
            if rpc == "Search":
                await gateway.Search(
                    gateway_pb2.SearchRequest(namespace=LOAD_NAMESPACE, query=query), timeout=DEADLINE_S
                )
            elif rpc == "Ask":
                await gateway.Ask(
                    gateway_pb2.AskRequest(namespace=LOAD_NAMESPACE, question=query + "?", skip_cache=True),
                    timeout=DEADLINE_S,
                )
            else:
                serial += 1
                document = gateway_pb2.Document(
                    id=f"load-{number}-{serial}", title="load", text=_text(rng, rng.randint(15, 60))
                )
                await gateway.IngestDocuments(
                    gateway_pb2.IngestDocumentsRequest(namespace=LOAD_NAMESPACE, documents=[document]),
                    timeout=DEADLINE_S,
                )
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            status = _status(error)
            detail = error.details() if isinstance(error, grpc.aio.AioRpcError) else str(error)
            pause_s = _retry_hint_s(error)
        ended = time.monotonic()
        load.calls.append(Call(rpc, started, ended, status, detail or ""))
        if status != "OK":
            await asyncio.sleep(pause_s)  # a failing stack must not turn into a busy loop


def _retry_hint_s(error: BaseException) -> float:
    """The server's hint (grpc-retry-pushback-ms) where it gives one, as a well-behaved client reads it."""
    if isinstance(error, grpc.aio.AioRpcError):
        for key, value in error.trailing_metadata() or ():
            if key == "grpc-retry-pushback-ms":
                return int(value) / 1000
    return 0.05


async def run_load(target: str, load: Load, clients: int = CLIENTS) -> None:
    channels = [_channel(target) for _ in range(CHANNELS)]
    try:
        stubs = [gateway_pb2_grpc.GatewayServiceStub(c) for c in channels]
        await asyncio.gather(*(_client(i, stubs[i % CHANNELS], load) for i in range(clients)))
    finally:
        for channel in channels:
            await channel.close()


def _counts(calls: Sequence[Call]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for call in calls:
        counts[call.rpc][call.status] += 1
    return counts


def _fmt_counts(counter: Counter[str]) -> str:
    return ", ".join(f"{status} {n}" for status, n in counter.most_common()) or "-"


def _percentiles(calls: Sequence[Call]) -> tuple[float, float]:
    ms = [(c.ended - c.started) * 1000 for c in calls if c.status == "OK"]
    if not ms:
        return float("nan"), float("nan")
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


# Phases


@dataclass
class Row:
    """One line of a phase's table."""

    label: str
    calls: int
    statuses: str
    p50: float = float("nan")
    p99: float = float("nan")
    recovery: str = ""
    check: str = ""
    verdict: str = ""


@dataclass
class Phase:
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)


async def phase_load(stack: Stack, s: Settings) -> Phase:
    load = Load()
    task = asyncio.create_task(run_load(stack.gateway_target, load))
    started = time.monotonic()
    await asyncio.sleep(s.load_s)
    load.stop.set()
    await task
    seconds = time.monotonic() - started
    rows = []
    allowed = {"OK", "RESOURCE_EXHAUSTED"}
    for rpc, counter in sorted(_counts(load.calls).items()):
        p50, p99 = _percentiles([c for c in load.calls if c.rpc == rpc])
        rows.append(
            Row(
                rpc,
                sum(counter.values()),
                _fmt_counts(counter),
                p50,
                p99,
                verdict=_verdict(set(counter) <= allowed),
            )
        )
    total = Counter(c.status for c in load.calls)
    p50, p99 = _percentiles(load.calls)
    rows.append(
        Row("all", len(load.calls), _fmt_counts(total), p50, p99, verdict=_verdict(set(total) <= allowed))
    )
    ok = total["OK"]
    return Phase(
        f"1. load: {CLIENTS} clients over {CHANNELS} channels, {seconds:.0f} s, deadline {DEADLINE_S:.0f} s",
        rows,
        [f"{ok / seconds:.1f} successful calls/s; criterion: only OK and RESOURCE_EXHAUSTED"],
    )


def _first_ok_after(calls: Sequence[Call], rpc: str, after: float) -> float | None:
    times = [c.ended - after for c in calls if c.rpc == rpc and c.started >= after and c.status == "OK"]
    return min(times) if times else None


def _recovery(calls: Sequence[Call], ready: float, rpcs: Sequence[str]) -> tuple[str, bool]:
    parts = []
    passed = True
    for rpc in rpcs:
        seconds = _first_ok_after(calls, rpc, ready)
        if seconds is None:
            parts.append(f"{rpc} never")
            passed = False
        else:
            parts.append(f"{rpc} {seconds:.1f}")
            passed = passed and seconds <= RECOVERY_TARGET_S
    return ", ".join(parts), passed


def _outage_rows(label: str, load: Load, down: float, ready: float, end: float, rpcs: Sequence[str]) -> Row:
    during = load.between(down, ready)
    counter = Counter(c.status for c in during)
    # After SERVING: UNAVAILABLE is allowed for calls started in the recovery window, nothing else.
    after_bad = Counter(
        c.status
        for c in load.calls
        if c.started >= ready
        and c.status not in ("OK", "RESOURCE_EXHAUSTED")
        and not (c.status == "UNAVAILABLE" and c.started < ready + RECOVERY_TARGET_S)
    )
    recovery, recovered = _recovery(load.calls, ready, rpcs)
    clean = set(counter) <= {"OK", "UNAVAILABLE"} and not after_bad
    p50, p99 = _percentiles(during)
    statuses = _fmt_counts(counter) + (f"; after: {_fmt_counts(after_bad)}" if after_bad else "")
    return Row(
        label,
        len(during),
        statuses,
        p50,
        p99,
        recovery=f"down {ready - down:.1f} s; {recovery}",
        verdict=_verdict(clean and recovered),
    )


async def phase_kills(stack: Stack, s: Settings) -> Phase:
    environment = stack.service_environment()
    modules = {name: module for name, module, _ in SERVICES}
    rows = []
    notes: list[str] = []
    for name, _, _ in SERVICES:
        load = Load()
        task = asyncio.create_task(run_load(stack.gateway_target, load))
        await asyncio.sleep(2.0)
        process = stack.process(name)
        down = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        await asyncio.sleep(OUTAGE_S)
        restarted = time.monotonic()
        stack.start_service(name, modules[name], environment)
        await asyncio.to_thread(stack.wait_until_serving, name, time.monotonic() + 120)
        ready = time.monotonic()
        _log(f"  {name}: killed, restarted, SERVING after {ready - restarted:.1f} s")
        await asyncio.sleep(s.kill_window_s - 2.0)
        load.stop.set()
        await task
        row = _outage_rows(f"kill -9 {name}", load, down, ready, time.monotonic(), [r for r, _ in MIX])
        row.recovery += f" (start-up {ready - restarted:.1f} s)"
        rows.append(row)
        notes.extend(_unexpected(name, load, ready))
    return Phase(
        "2. kill -9 each service under load, restarted with the same environment and port",
        rows,
        [
            "calls: those overlapping kill..SERVING; p50/p99 of their successes; recovery: SERVING to the"
            " first success of each RPC started after it (target <= 5 s)",
            "criterion: only OK/UNAVAILABLE during the outage; after SERVING, UNAVAILABLE only in the first"
            " 5 s, then OK/RESOURCE_EXHAUSTED (DEADLINE_EXCEEDED counts as hung); recovery <= 5 s",
            "'after:' lists the statuses that break the rule after SERVING",
            *notes,
        ],
    )


async def _restart_gateway(stack: Stack, **settings: str) -> None:
    await asyncio.to_thread(stack.stop_service, "gateway")
    stack.start_service("gateway", "gateway", {**stack.service_environment(), **settings})
    await asyncio.to_thread(stack.wait_until_serving, "gateway", time.monotonic() + 60)


async def phase_overload(stack: Stack, s: Settings) -> Phase:
    rows = []
    for label, limit in OVERLOAD_LIMITS:
        await _restart_gateway(stack, GATEWAY_MAX_IN_FLIGHT=str(limit))
        load = Load()
        task = asyncio.create_task(run_load(stack.gateway_target, load, OVERLOAD_CLIENTS))
        await asyncio.sleep(s.overload_s)
        load.stop.set()
        await task
        statuses = Counter(c.status for c in load.calls)
        p50, p99 = _percentiles(load.calls)
        rows.append(
            Row(
                label,
                len(load.calls),
                _fmt_counts(statuses),
                p50,
                p99,
                check=f"{statuses['OK'] / s.overload_s:.1f} successful calls/s",
                verdict=_verdict(set(statuses) <= {"OK", "RESOURCE_EXHAUSTED"}),
            )
        )
    await _restart_gateway(stack)  # back to the defaults
    return Phase(
        f"5. overload: {OVERLOAD_CLIENTS} clients, {s.overload_s:.0f} s each, deadline {DEADLINE_S:.0f} s",
        rows,
        [
            "p50/p99 of the successful calls; a refused client waits as long as the gateway's retry hint",
            "criterion: only OK and RESOURCE_EXHAUSTED (a DEADLINE_EXCEEDED is a call queued too long)",
        ],
    )


def _restart_postgres(stack: Stack) -> list[str]:
    """pg_ctl stop, then start as pgserver does; returns the failed start attempts (retried, 3 at most)."""
    postgres = stack.embedded_postgres
    postgres.stop()
    time.sleep(OUTAGE_S)
    failures = []
    for _ in range(3):
        try:
            with postgres._lock:
                postgres.ensure_postgres_running()
            break
        except subprocess.SubprocessError as error:
            failures.append(f"{type(error).__name__}: {str(error)[-60:]}")
    return failures


async def phase_postgres(stack: Stack, s: Settings) -> Phase:
    load = Load()
    log_start = len(stack.log_path("retriever").read_text(errors="replace"))
    task = asyncio.create_task(run_load(stack.gateway_target, load))
    await asyncio.sleep(2.0)
    uri = stack.database_url_in_use
    down = time.monotonic()
    start_failures = await asyncio.to_thread(_restart_postgres, stack)
    ready = time.monotonic()
    same_uri = str(stack.embedded_postgres.get_uri()) == uri
    await asyncio.sleep(s.kill_window_s - 2.0)
    load.stop.set()
    await task
    row = _outage_rows("pg_ctl stop, start", load, down, ready, time.monotonic(), [r for r, _ in MIX])
    log = stack.log_path("retriever").read_text(errors="replace")[log_start:]
    errors = Counter(line.strip()[:160] for line in log.splitlines() if "Error" in line and ":" in line)
    return Phase(
        "3. PostgreSQL restart under load (no service restarted)",
        [row],
        [
            f"PostgreSQL down {ready - down:.1f} s (stop, {OUTAGE_S:.0f} s, start); "
            f"same URI after: {same_uri}",
            *(f"pg_ctl start failed, retried: {failure}" for failure in start_failures),
            *_unexpected("postgres", load, down),
            *(f"retriever log ({n}x): {line}" for line, n in errors.most_common(4)),
        ],
    )


def _unexpected(name: str, load: Load, since: float) -> list[str]:
    """One example of each status other than OK/UNAVAILABLE/RESOURCE_EXHAUSTED, per RPC."""
    seen: dict[tuple[str, str], tuple[int, str]] = {}
    for c in load.calls:
        if c.ended >= since and c.status not in ("OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"):
            n, detail = seen.get((c.rpc, c.status), (0, c.detail))
            seen[(c.rpc, c.status)] = (n + 1, detail)
    return [f"{name}: {rpc} {status} x{n}: {detail[:160]}" for (rpc, status), (n, detail) in seen.items()]


# Interrupted ingests

CHUNKS_SQL = """
SELECT document_id, chunk_index, text, start_char, end_char, content_hash
FROM rag_chunks WHERE namespace = $1 ORDER BY document_id, chunk_index
"""
PARTIAL_SQL = """
SELECT d.document_id, d.chunk_count, count(c.id) AS stored
FROM rag_documents d LEFT JOIN rag_chunks c USING (namespace, document_id)
WHERE d.namespace = $1 GROUP BY d.document_id, d.chunk_count
"""


@dataclass
class Snapshot:
    chunks: int
    documents: int
    chunk_hash: str
    listed: dict[str, tuple[str, int]]


async def snapshot(
    conn: asyncpg.Connection, gateway: gateway_pb2_grpc.GatewayServiceStub, ns: str
) -> Snapshot:
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


async def ingest(
    gateway: gateway_pb2_grpc.GatewayServiceStub, ns: str, docs: Sequence[gateway_pb2.Document]
) -> Counter[str]:
    """Two callers, 25 documents a call; statuses of the calls (a failed call is not retried here)."""
    statuses, _ = await ingest_batches(gateway, ns, [docs[i : i + 25] for i in range(0, len(docs), 25)])
    return statuses


async def ingest_until_done(
    gateway: gateway_pb2_grpc.GatewayServiceStub, ns: str, docs: Sequence[gateway_pb2.Document]
) -> tuple[Counter[str], int]:
    """The whole ingest, then its failed calls again until none fails (10 passes at most, 0.5 s apart)."""
    statuses, failed = await ingest_batches(gateway, ns, [docs[i : i + 25] for i in range(0, len(docs), 25)])
    passes = 1
    while failed and passes < 10:
        await asyncio.sleep(0.5)
        more, failed = await ingest_batches(gateway, ns, failed)
        statuses += more
        passes += 1
    return statuses, passes


async def ingest_batches(
    gateway: gateway_pb2_grpc.GatewayServiceStub, ns: str, batches: Sequence[Sequence[gateway_pb2.Document]]
) -> tuple[Counter[str], list[Sequence[gateway_pb2.Document]]]:
    statuses: Counter[str] = Counter()
    failed: list[Sequence[gateway_pb2.Document]] = []
    queue: asyncio.Queue[Sequence[gateway_pb2.Document]] = asyncio.Queue()
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
                statuses[_status(error)] += 1
                failed.append(batch)

    await asyncio.gather(caller(), caller())
    return statuses, failed


async def _until_stored(conn: asyncpg.Connection, ns: str, count: float, task: asyncio.Task[object]) -> None:
    """Return once `count` documents of `ns` are stored, or `task` is done."""
    while not task.done():
        if await conn.fetchval("SELECT count(*) FROM rag_documents WHERE namespace = $1", ns) >= count:
            return
        await asyncio.sleep(0.05)


async def phase_ingest(stack: Stack, s: Settings) -> Phase:
    docs = documents("doc", s.documents, seed=7)
    environment = stack.service_environment()
    modules = {name: module for name, module, _ in SERVICES}
    rows = []
    notes = []
    conn = await asyncpg.connect(stack.database_url_in_use)
    channel = _channel(stack.gateway_target)
    try:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        started = time.monotonic()
        statuses = await ingest(gateway, "reliability-ref", docs)
        reference_s = time.monotonic() - started
        reference = await snapshot(conn, gateway, "reliability-ref")
        final = {doc_id: count for doc_id, (_, count) in reference.listed.items()}
        rows.append(
            Row(
                "uninterrupted (reference)",
                sum(statuses.values()),
                _fmt_counts(statuses),
                recovery=f"{reference_s:.1f} s",
                check=f"{reference.documents} docs, {reference.chunks} chunks, {reference.chunk_hash}",
                verdict=_verdict(reference.documents == len(docs) and set(statuses) == {"OK"}),
            )
        )
        _log(f"  reference ingest: {reference_s:.1f} s, {reference.chunks} chunks")
        for victim in ("gateway", "retriever"):
            ns = f"reliability-kill-{victim}"
            stop = asyncio.Event()
            poll = Poll()
            poller = asyncio.create_task(poll_partial(stack.database_url_in_use, ns, final, stop, poll))

            first = asyncio.create_task(ingest(gateway, ns, docs))
            # Kill once 40 % of the documents are stored (or the first ingest is over).
            await _until_stored(conn, ns, len(docs) * 0.4, first)
            stored_at_kill = await conn.fetchval(
                "SELECT count(*) FROM rag_documents WHERE namespace = $1", ns
            )
            process = stack.process(victim)
            os.kill(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            first_statuses = await first
            stack.start_service(victim, modules[victim], environment)
            await asyncio.to_thread(stack.wait_until_serving, victim, time.monotonic() + 120)
            stored_after = await conn.fetchval("SELECT count(*) FROM rag_documents WHERE namespace = $1", ns)
            started = time.monotonic()
            second_statuses, passes = await ingest_until_done(gateway, ns, docs)
            rerun_s = time.monotonic() - started
            stop.set()
            await poller
            got = await snapshot(conn, gateway, ns)
            same = (
                got.chunk_hash == reference.chunk_hash
                and got.chunks == reference.chunks
                and got.listed == reference.listed
            )
            partial = f"{len(poll.partial)} partial in {poll.polls} polls"
            rows.append(
                Row(
                    f"kill -9 {victim} mid-way",
                    sum(first_statuses.values()),
                    _fmt_counts(first_statuses),
                    check=f"{stored_at_kill}..{stored_after} docs stored at the kill",
                )
            )
            rows.append(
                Row(
                    "  re-run until all OK",
                    sum(second_statuses.values()),
                    _fmt_counts(second_statuses),
                    recovery=f"{rerun_s:.1f} s, {passes} pass{'es' if passes > 1 else ''}",
                    check=f"{got.documents} docs, {got.chunks} chunks, {got.chunk_hash}; "
                    f"{'same' if same else 'DIFFERENT'}; {partial}",
                    verdict=_verdict(same and not poll.partial),
                )
            )
            if poll.partial:
                notes.append(f"{victim}: partial documents seen: {poll.partial[:5]}")
            if poll.errors:
                notes.append(f"{victim}: poller errors {dict(poll.errors)}")
            _log(f"  {victim}: {_fmt_counts(first_statuses)}; re-run {rerun_s:.1f} s; same={same}")
    finally:
        await channel.close()
        await conn.close()
    notes.append(
        "check: documents and chunks in the namespace and a hash of its chunk set (id, index, text,"
        " offsets, content hash); 'same': equal to the reference, ListDocuments too"
    )
    return Phase(f"4. interrupted ingests of {len(docs)} short documents, 2 callers x 25 a call", rows, notes)


# The run


async def seed(stack: Stack) -> None:
    async with _channel(stack.gateway_target) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        await gateway.IngestDocuments(
            gateway_pb2.IngestDocumentsRequest(
                namespace=LOAD_NAMESPACE, documents=documents("seed", SEED_DOCUMENTS, seed=1)
            ),
            timeout=INGEST_DEADLINE_S,
        )


async def run_phases(stack: Stack, s: Settings, only: set[str]) -> list[Phase]:
    await seed(stack)
    phases = []
    for name, function in (
        ("load", phase_load),
        ("kills", phase_kills),
        ("postgres", phase_postgres),
        ("ingest", phase_ingest),
        ("overload", phase_overload),
    ):
        if only and name not in only:
            continue
        _log(f"phase {name}")
        try:
            phases.append(await function(stack, s))
        except Exception as error:  # report the phase as failed, go on
            phases.append(
                Phase(
                    f"{name}: failed", [Row("error", 0, f"{type(error).__name__}: {error}", verdict="MISS")]
                )
            )
    return phases


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"


def report(phases: Sequence[Phase], seconds: float, quick: bool) -> None:
    print(
        f"Reliability of the stack ({time.strftime('%Y-%m-%d')}{', --quick' if quick else ''}); "
        f"{os.cpu_count()} cores, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end"
    )
    for phase in phases:
        print(f"\n{phase.title}")
        print(f"  {'':<26}{'calls':>6}{'p50 ms':>8}{'p99 ms':>8}  verdict  statuses | recovery | check")
        for row in phase.rows:
            extras = " | ".join(x for x in (row.recovery, row.check) if x)
            print(
                f"  {row.label:<26}{row.calls:>6}{_ms(row.p50):>8}{_ms(row.p99):>8}  {row.verdict or '':<7}  "
                f"{row.statuses}{' | ' + extras if extras else ''}"
            )
        for note in phase.notes:
            print(f"  {note}")
    print(f"\n{seconds / 60:.1f} minutes in all")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="15 s of load, 200 documents, 10 s per overload")
    parser.add_argument("--load", type=float, help="seconds of load in phase 1")
    parser.add_argument("--documents", type=int, help="documents per ingest in phase 4")
    parser.add_argument("--only", nargs="*", default=[], help="phases: load kills postgres ingest overload")
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    if args.load:
        s = dataclasses.replace(s, load_s=args.load)
    if args.documents:
        s = dataclasses.replace(s, documents=args.documents)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rag-bench-reliability-") as data_dir:
        ports = {name: free_port() for name in DEFAULT_PORTS}
        _log("starting the stack")
        with Stack(data_dir=Path(data_dir), ports=ports, env=SERVICE_ENV) as stack:
            phases = asyncio.run(run_phases(stack, s, set(args.only)))
    report(phases, time.monotonic() - started, args.quick)


if __name__ == "__main__":
    main()
