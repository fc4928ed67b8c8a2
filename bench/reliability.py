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

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from benchkit.cli import parser
from benchkit.output import log
from benchkit.stack import running_stack
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from reliability_bench.documents import documents
from reliability_bench.ingests import INGEST_DEADLINE_S, phase_ingest
from reliability_bench.load import LOAD_NAMESPACE, channel
from reliability_bench.outages import phase_kills, phase_postgres
from reliability_bench.settings import FULL, QUICK, SERVICE_ENV, Settings
from reliability_bench.steady import phase_load, phase_overload
from reliability_bench.table import Phase, Row, report

SEED_DOCUMENTS = 60
PHASES: dict[str, Callable[[Stack, Settings], Awaitable[Phase]]] = {
    "load": phase_load,
    "kills": phase_kills,
    "postgres": phase_postgres,
    "ingest": phase_ingest,
    "overload": phase_overload,
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


async def run_phases(stack: Stack, s: Settings, only: set[str]) -> list[Phase]:
    await seed(stack)
    phases = []
    for name, function in PHASES.items():
        if only and name not in only:
            continue
        log(f"phase {name}")
        try:
            phases.append(await function(stack, s))
        except Exception as error:  # report the phase as failed, go on
            phases.append(
                Phase(
                    f"{name}: failed", [Row("error", 0, f"{type(error).__name__}: {error}", verdict="MISS")]
                )
            )
    return phases


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument(
        "--quick", action="store_true", help="15 s of load, 200 documents, 10 s per overload"
    )
    arguments.add_argument("--load", type=float, help="seconds of load in phase 1")
    arguments.add_argument("--documents", type=int, help="documents per ingest in phase 4")
    arguments.add_argument("--only", nargs="*", default=[], help=f"phases: {' '.join(PHASES)}")
    args = arguments.parse_args()
    s = QUICK if args.quick else FULL
    if args.load:
        s = dataclasses.replace(s, load_s=args.load)
    if args.documents:
        s = dataclasses.replace(s, documents=args.documents)
    started = time.monotonic()
    log("starting the stack")
    with running_stack("rag-bench-reliability-", SERVICE_ENV) as stack:
        phases = asyncio.run(run_phases(stack, s, set(args.only)))
    report(phases, time.monotonic() - started, args.quick)


if __name__ == "__main__":
    main()
