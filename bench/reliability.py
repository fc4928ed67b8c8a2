"""Reliability of the whole stack under load, service kills, a PostgreSQL restart, interrupted ingests,
overload, requests at and over the gateway's caps, and a read replica killed.

    python bench/reliability.py [--quick] [--only PHASE ...]

One Stack (embedded PostgreSQL in a temporary directory, the four services on
free loopback ports, default settings; the Stack gives them their inner-hop
key and the retriever its database role) serves every phase:

1. Load: CLIENTS concurrent clients (grpc.aio in this process, over CHANNELS
   channels configured as the CLI's: retry of UNAVAILABLE) mixing Ask, Search and
   one-document IngestDocuments for --load seconds. Every call has a deadline.
   Statuses per RPC, p50/p99 of the successful calls. Criterion: no status but
   OK and RESOURCE_EXHAUSTED.
2. Kill -9 each service in turn during the same load: SIGKILL, a second's
   outage, then Stack.start_service with the same environment and port.
   Statuses from the kill until the service is SERVING again, and the time from
   SERVING to the first successful call of each RPC started after it.
   Criterion: only OK, UNAVAILABLE and RESOURCE_EXHAUSTED during the outage,
   every RPC succeeds again within 5 s, no DEADLINE_EXCEEDED (a hung call).
3. PostgreSQL restart during the load: a fast shutdown (SIGINT to the
   postmaster: sessions are ended), a second down, then pg_ctl start on the
   same data directory from a helper process; no service restarted. Neither
   step forks this process, whose gRPC threads make a fork unsafe
   (reliability_bench/postgres_control.py). Statuses while it is down and
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
   gateway restarted without a bound on calls in flight, then at its defaults,
   then with GATEWAY_MAX_IN_FLIGHT at a quarter of its default. Criterion:
   only OK and RESOURCE_EXHAUSTED; the unbounded run shows what the bound
   prevents.
6. Caps: CAPS_CLIENTS clients sending the largest requests the gateway's caps
   allow (ingests at the message, document count and document size caps, the
   longest question, the largest filter) and requests over each cap, while the
   gateway's RSS is sampled (reliability_bench/caps.py). Criterion: only OK,
   INVALID_ARGUMENT and RESOURCE_EXHAUSTED, each kind as its size calls for,
   and the gateway's peak RSS under its pod's memory limit in k8s/base.
7. Read replica killed and restarted: a streaming standby of the embedded
   PostgreSQL (pg_basebackup) becomes the retriever's read replica (the
   retriever restarted with RETRIEVER_READ_DATABASE_URLS). Phase 1's load; a
   third of kill_window_s in, SIGKILL to the standby's postmaster; a third
   later pg_ctl start; the load goes on until the retriever logs the replica
   in rotation again, and a third more. Then the retriever runs without it
   again (reliability_bench/replica.py). Criterion: only OK and
   RESOURCE_EXHAUSTED before, during and after the outage (reads fall back to
   the primary), and the standby's scans of rag_chunks growing before the kill
   and after its return (reads did go to it).

Phases are isolated: each runs with a time limit, an exception fails it alone,
and after it the stack is checked (PostgreSQL takes a query, the four services
answer SERVING); what is broken is restarted, and the phase that left it so
gets a failing row that says what was restarted. Each phase's table is headed
PASS or FAIL (FAIL when one of its rows MISSes); the run exits 1 when a phase
failed, 0 when all passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time

from benchkit.cli import parser
from benchkit.output import PASS, log
from benchkit.stack import SERVICE_NAMES, running_stack
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from reliability_bench.caps import phase_caps
from reliability_bench.documents import documents
from reliability_bench.ingests import INGEST_DEADLINE_S, phase_ingest
from reliability_bench.isolation import PhaseFunction, run_isolated
from reliability_bench.load import LOAD_NAMESPACE, channel
from reliability_bench.outages import phase_kills, phase_postgres
from reliability_bench.postgres_control import embedded_postgres
from reliability_bench.replica import phase_replica
from reliability_bench.settings import FULL, QUICK, SERVICE_ENV, Settings
from reliability_bench.steady import phase_load, phase_overload
from reliability_bench.table import Phase, report

SEED_DOCUMENTS = 60
PHASES: dict[str, PhaseFunction] = {
    "load": phase_load,
    "kills": phase_kills,
    "postgres": phase_postgres,
    "ingest": phase_ingest,
    "overload": phase_overload,
    "caps": phase_caps,
    "replica": phase_replica,
}


async def seed(stack: Stack) -> None:
    """The documents the load's Search and Ask find."""
    async with channel(stack.gateway_target) as opened:
        gateway = gateway_pb2_grpc.GatewayServiceStub(opened)
        await gateway.IngestDocuments(
            gateway_pb2.IngestDocumentsRequest(
                namespace=LOAD_NAMESPACE, documents=documents("seed", SEED_DOCUMENTS, seed=1)
            ),
            timeout=INGEST_DEADLINE_S,
        )


async def run_phases(stack: Stack, s: Settings, only: set[str]) -> dict[str, Phase]:
    """The phases in order, each from a healthy stack (isolation.run_isolated)."""
    await seed(stack)
    postgres = embedded_postgres(stack)
    return {
        name: await run_isolated(name, function, stack, postgres, s)
        for name, function in PHASES.items()
        if not only or name in only
    }


def stop_without_forking(stack: Stack) -> None:
    """The services, then PostgreSQL by signal: the Stack's own stop would fork pg_ctl from this process."""
    for name in reversed(SERVICE_NAMES):
        with contextlib.suppress(KeyError):  # a service a failed phase left stopped
            stack.stop_service(name)
    embedded_postgres(stack).stop()


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument(
        "--quick", action="store_true", help="15 s of load, 200 documents, 10 s per overload and of caps"
    )
    arguments.add_argument("--load", type=float, help="seconds of load in phase 1")
    arguments.add_argument("--documents", type=int, help="documents per ingest in phase 4")
    arguments.add_argument("--only", nargs="*", default=[], choices=list(PHASES), help="phases to run")
    args = arguments.parse_args()
    s = QUICK if args.quick else FULL
    if args.load:
        s = dataclasses.replace(s, load_s=args.load)
    if args.documents:
        s = dataclasses.replace(s, documents=args.documents)
    started = time.monotonic()
    log("starting the stack")
    with running_stack("rag-bench-reliability-", SERVICE_ENV) as stack:
        try:
            phases = asyncio.run(run_phases(stack, s, set(args.only)))
        finally:
            stop_without_forking(stack)
    report(phases, time.monotonic() - started, args.quick)
    sys.exit(0 if all(phase.outcome == PASS for phase in phases.values()) else 1)


if __name__ == "__main__":
    main()
