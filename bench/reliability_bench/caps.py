"""Phase 6: CAPS_CLIENTS clients sending the largest requests the gateway's caps allow and requests over
each cap (caps_requests), while the gateway's resident memory is sampled.

Each client goes round the requests, starting at its own, so every kind is
in flight from several clients at once. A request is serialized once and sent
as those bytes, so the clients cost this process no encoding per call.
Criterion: only OK, INVALID_ARGUMENT and RESOURCE_EXHAUSTED; a request within
the caps never refused as invalid, one over a cap never served; and the
gateway's peak RSS under the memory limit of its Kubernetes pod.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import grpc

from benchkit import rpc
from benchkit.output import log, verdict
from rag.gateway.v1 import gateway_pb2
from rag.retriever.v1 import retriever_pb2
from rag_cli.metrics import percentile
from rag_cli.stack import Stack
from reliability_bench.caps_requests import (
    CAPS_NAMESPACE,
    CapRequest,
    cap_requests,
    caps_in_force,
    hidden_caps,
)
from reliability_bench.load import CHANNELS, Call, channel, retry_hint_s
from reliability_bench.memory import PeakRss, memory_limit_bytes
from reliability_bench.settings import Settings
from reliability_bench.table import Phase, Row, status_columns
from services.common.registry import GATEWAY
from services.common.settings import MiB

CAPS_CLIENTS = 20
# Long enough for the largest ingest on shared cores: a DEADLINE_EXCEEDED here is a call queued too long.
CAPS_DEADLINE_S = 60.0
# The first ingest of the largest documents embeds them.
SETUP_DEADLINE_S = 300.0

OK = "OK"
# An ingest answered OK whose document the gateway would not store (a file it refuses to read).
DOCUMENT_REFUSED = "OK, document refused"
# What the gateway may answer at all, and what each kind of request may get.
ALLOWED = {OK, "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
SERVED = {OK, "RESOURCE_EXHAUSTED"}
REFUSED = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", DOCUMENT_REFUSED}

_RESPONSES: dict[str, Callable[[bytes], object]] = {
    "IngestDocuments": gateway_pb2.IngestDocumentsResponse.FromString,
    "Search": gateway_pb2.SearchResponse.FromString,
    "Ask": gateway_pb2.AskResponse.FromString,
}

Send = Callable[[CapRequest], "grpc.aio.UnaryUnaryCall[bytes, object]"]


def _sender(opened: grpc.aio.Channel, deadline_s: float) -> Send:
    """Sends a CapRequest's bytes as they are to its GatewayService method."""
    methods = {
        method: opened.unary_unary(
            f"/{GATEWAY.grpc_service}/{method}",
            request_serializer=lambda payload: payload,
            response_deserializer=deserialize,
        )
        for method, deserialize in _RESPONSES.items()
    }
    return lambda request: methods[request.method](request.payload, timeout=deadline_s)


def _outcome(reply: object) -> str:
    if isinstance(reply, gateway_pb2.IngestDocumentsResponse) and any(
        result.status == retriever_pb2.UPSERT_STATUS_FAILED for result in reply.results
    ):
        return DOCUMENT_REFUSED
    return OK


async def _setup(opened: grpc.aio.Channel, requests: Sequence[CapRequest]) -> None:
    """The largest ingests once, so that in the phase their documents come back unchanged."""
    send = _sender(opened, SETUP_DEADLINE_S)
    started = time.monotonic()
    replies = await asyncio.gather(*(send(request) for request in requests if request.setup))
    refused = [outcome for outcome in map(_outcome, replies) if outcome != OK]
    if refused:
        raise RuntimeError(f"the largest ingests within the caps were not stored: {refused}")
    log(f"  largest ingests stored in {time.monotonic() - started:.1f} s")


async def _client(number: int, send: Send, requests: Sequence[CapRequest], stop: asyncio.Event) -> list[Call]:
    calls = []
    turn = number
    while not stop.is_set():
        request = requests[turn % len(requests)]
        turn += 1
        started = time.monotonic()
        try:
            outcome = _outcome(await send(request))
        except grpc.aio.AioRpcError as error:
            calls.append(
                Call(request.label, started, time.monotonic(), rpc.status_name(error), rpc.detail(error))
            )
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                await asyncio.sleep(retry_hint_s(error))
        else:
            calls.append(Call(request.label, started, time.monotonic(), outcome))
    return calls


async def _run_clients(target: str, requests: Sequence[CapRequest], seconds: float) -> list[Call]:
    stop = asyncio.Event()
    channels = [channel(target) for _ in range(CHANNELS)]
    try:
        senders = [_sender(opened, CAPS_DEADLINE_S) for opened in channels]
        clients = [
            asyncio.create_task(_client(i, senders[i % CHANNELS], requests, stop))
            for i in range(CAPS_CLIENTS)
        ]
        await asyncio.sleep(seconds)
        stop.set()
        return [call for calls in await asyncio.gather(*clients) for call in calls]
    finally:
        for opened in channels:
            await opened.close()


def _ms(calls: Sequence[Call], share: float) -> float:
    """The `share` percentile of the calls' times in ms, whatever their status; NaN without calls."""
    times = [(call.ended - call.started) * 1000 for call in calls]
    return percentile(times, share) if times else float("nan")


def _rows(requests: Sequence[CapRequest], calls: Sequence[Call]) -> list[Row]:
    by_label: dict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_label[call.rpc].append(call)
    rows = []
    for request in requests:
        made = by_label[request.label]
        statuses = Counter(call.status for call in made)
        expected = SERVED if request.within_caps else REFUSED
        rows.append(
            Row(
                f"{'' if request.within_caps else 'over: '}{request.label}",
                *status_columns(statuses),
                _ms(made, 50),
                _ms(made, 99),
                check=f"{len(request.payload) / MiB:.2f} MiB",
                verdict=verdict(bool(made) and set(statuses) <= expected),
            )
        )
    return rows


async def phase_caps(stack: Stack, s: Settings) -> Phase:
    requests = await asyncio.to_thread(cap_requests)
    limit = memory_limit_bytes(GATEWAY.name)
    with PeakRss(stack.process(GATEWAY.name).pid) as rss:
        async with channel(stack.gateway_target) as opened:
            await _setup(opened, requests)
        setup_peak = rss.peak
        calls = await _run_clients(stack.gateway_target, requests, s.caps_s)
    total = Counter(call.status for call in calls)
    unexpected = {
        call.status: call.detail for call in calls if call.status not in ALLOWED | {DOCUMENT_REFUSED}
    }
    rows = [
        *_rows(requests, calls),
        Row("all", *status_columns(total), _ms(calls, 50), _ms(calls, 99), verdict=verdict(not unexpected)),
        Row(
            "gateway RSS",
            0,
            f"peak {rss.peak / MiB:.0f} MiB of the pod's {limit / MiB:.0f} MiB limit",
            check=f"{rss.first / MiB:.0f} MiB at the start, {setup_peak / MiB:.0f} MiB peak in the setup;"
            f" {rss.samples} samples",
            verdict=verdict(rss.peak < limit),
        ),
    ]
    return Phase(
        f"6. caps: {CAPS_CLIENTS} clients, {s.caps_s:.0f} s, the largest requests within the gateway's caps"
        f" and over each, deadline {CAPS_DEADLINE_S:.0f} s, namespace {CAPS_NAMESPACE}",
        rows,
        [
            caps_in_force(),
            *(f"beyond the message cap, so met by no request: {cap}" for cap in hidden_caps()),
            "p50/p99 of every call of the kind; criterion: within the caps OK or RESOURCE_EXHAUSTED, over a"
            " cap INVALID_ARGUMENT or RESOURCE_EXHAUSTED (or the document refused), nothing else;"
            " peak RSS below limits.memory in k8s/base/gateway.yaml",
            *(f"unexpected {status}: {detail[:160]}" for status, detail in unexpected.items()),
        ],
    )
