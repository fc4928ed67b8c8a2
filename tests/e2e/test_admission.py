"""Deliberate overload: past GATEWAY_MAX_IN_FLIGHT, or past one key's GATEWAY_MAX_IN_FLIGHT_PER_KEY, the
gateway refuses at once with RESOURCE_EXHAUSTED.

A gateway of its own, limited to a few calls in flight, in front of a generator
whose LLM (the fake chat-completions server, the real HTTP protocol) holds its
replies until the test releases them: Asks then stay in flight as long as the
test wants, which makes "the gateway is full" a state, not a race. "At once" is
shown by order, not by a clock: the refusal comes back while the admitted calls
are still held, so it cannot have waited for a slot.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import keys
from gateway.admission import IN_FLIGHT_SETTING, PER_KEY_SETTING
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from tests.conftest import sample_document
from tests.e2e.held_llm import HeldChatServer
from tests.e2e.replicas import gateway_with_openai_generator
from tests.e2e.test_auth import MALFORMED_NAMESPACE, bearer, raw_call, rejection
from tests.generator.test_openai_backend import Reply, completion

LIMIT = 2
QUESTION = "When does the nightly base backup run?"
Metadata = tuple[tuple[str, str], ...]


@dataclass
class Overloadable:
    gateway: gateway_pb2_grpc.GatewayServiceStub
    channel: grpc.Channel
    llm: HeldChatServer
    release: threading.Event
    namespace: str

    def ask(self, metadata: Metadata = ()) -> grpc.Future[gateway_pb2.AskResponse]:
        request = gateway_pb2.AskRequest(namespace=self.namespace, question=QUESTION, skip_cache=True)
        return self.gateway.Ask.future(request, metadata=metadata, timeout=60)

    def hold(self, calls: int, metadata: Metadata = ()) -> list[grpc.Future[gateway_pb2.AskResponse]]:
        """`calls` Asks, each admitted and held at the LLM when this returns."""
        arrived = len(self.llm.requests)
        held = [self.ask(metadata) for _ in range(calls)]
        self.llm.wait_for_requests(arrived + calls)
        return held

    def search(self, metadata: Metadata = (), namespace: str | None = None) -> gateway_pb2.SearchResponse:
        request = gateway_pb2.SearchRequest(namespace=namespace or self.namespace, query=QUESTION)
        response: gateway_pb2.SearchResponse = self.gateway.Search(request, metadata=metadata, timeout=30)
        return response

    def refused_search(self, metadata: Metadata = (), namespace: str | None = None) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as refused:
            self.search(metadata, namespace)
        return refused.value

    def search_once_a_slot_is_free(self, metadata: Metadata = ()) -> gateway_pb2.SearchResponse:
        # A slot is given back when the server has finished the call, a moment
        # after its caller has the answer (or has cancelled): no event of the
        # caller's marks it, so retry on the refusal, bounded only as a failure.
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.search(metadata)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@contextlib.contextmanager
def overloadable_gateway(
    stack: Stack, data_dir: Path, namespace: str, ingest_metadata: Metadata = (), **settings: str
) -> Iterator[Overloadable]:
    """A gateway with `settings` (limits, keys) in front of an LLM that holds its replies until released."""
    release = threading.Event()
    llm = HeldChatServer()
    llm.replies = [Reply(body=completion("The base backup runs nightly at 02:00 UTC [1]."), release=release)]
    llm.start()
    try:
        with (
            gateway_with_openai_generator(
                stack, data_dir, llm.base_url, GENERATOR_OPENAI_MODEL="fake-model", **settings
            ) as target,
            grpc.insecure_channel(target) as channel,
        ):
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            gateway.IngestDocuments(
                gateway_pb2.IngestDocumentsRequest(
                    namespace=namespace, documents=[sample_document("postgres-backup-runbook.md")]
                ),
                metadata=ingest_metadata,
            )
            yield Overloadable(gateway, channel, llm, release, namespace)
    finally:
        release.set()  # no reply left hanging in the fake
        llm.stop()


@pytest.fixture
def overloadable(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, namespace: str
) -> Iterator[Overloadable]:
    with overloadable_gateway(
        stack, tmp_path_factory.mktemp("admission"), namespace, GATEWAY_MAX_IN_FLIGHT=str(LIMIT)
    ) as gateway:
        yield gateway


def assert_retry_hint(error: grpc.RpcError) -> None:
    """The refusal carries when to retry, as google.rpc.RetryInfo and as gRPC's pushback."""
    trailing = {metadatum.key: metadatum.value for metadatum in error.trailing_metadata()}
    pushback_ms = int(trailing["grpc-retry-pushback-ms"])
    assert pushback_ms > 0
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert [detail.Unpack(retry) for detail in status.details] == [True]
    assert retry.retry_delay.ToMilliseconds() == pushback_ms


def test_past_the_limit_calls_are_refused_at_once_with_a_retry_hint_and_probes_still_answer(
    overloadable: Overloadable,
) -> None:
    held = overloadable.hold(LIMIT)

    error = overloadable.refused_search()
    # Nothing has let the held calls go yet: a refusal that came back now did not
    # wait for one of their slots.
    held_while_refused = [not future.done() for future in held]
    health = health_pb2_grpc.HealthStub(overloadable.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )

    overloadable.release.set()
    answers = [future.result() for future in held]
    after = overloadable.search_once_a_slot_is_free()

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert IN_FLIGHT_SETTING in (error.details() or "")
    assert held_while_refused == [True] * LIMIT, "refused while the admitted calls were in flight"
    assert_retry_hint(error)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert all("02:00" in answer.answer for answer in answers), "the admitted calls were served"
    assert after.hits, "the slots were given back"


def test_a_full_gateway_refuses_before_it_reads_the_request(overloadable: Overloadable) -> None:
    held = overloadable.hold(LIMIT)

    # Requests the gateway would refuse for what they hold, had it read them.
    malformed_namespace = overloadable.refused_search(namespace=MALFORMED_NAMESPACE)
    undecodable = rejection(raw_call(overloadable.channel, "Search", ()))
    still_held = [not future.done() for future in held]
    overloadable.release.set()

    assert malformed_namespace.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert undecodable.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert still_held == [True] * LIMIT
    assert all(future.result().answer for future in held)


def test_a_cancelled_call_gives_its_slot_back(overloadable: Overloadable) -> None:
    held = overloadable.hold(LIMIT)

    held[0].cancel()
    served_while_one_is_held = overloadable.search_once_a_slot_is_free()
    overloadable.release.set()

    assert served_while_one_is_held.hits
    assert held[1].result().answer


def test_one_key_cannot_take_every_slot(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, namespace: str
) -> None:
    directory = tmp_path_factory.mktemp("admission-per-key")
    keys_file = directory / "keys.json"
    busy = bearer(keys.create_key(keys_file, (namespace,), "busy"))
    other = bearer(keys.create_key(keys_file, (namespace,), "other"))
    per_key, in_all = 2, 3
    with overloadable_gateway(
        stack,
        directory,
        namespace,
        ingest_metadata=other,
        GATEWAY_API_KEYS_FILE=str(keys_file),
        GATEWAY_MAX_IN_FLIGHT=str(in_all),
        GATEWAY_MAX_IN_FLIGHT_PER_KEY=str(per_key),
    ) as gateway:
        held = gateway.hold(per_key, busy)

        refused = gateway.refused_search(busy)
        # The gateway has room still (per_key of in_all slots taken), for other keys.
        served_for_another_key = gateway.search(other)
        still_held = [not future.done() for future in held]
        gateway.release.set()
        answers = [future.result() for future in held]
        after = gateway.search_once_a_slot_is_free(busy)

    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"API key 'busy' is at its limit of {per_key} calls in flight ({PER_KEY_SETTING})" in (
        refused.details() or ""
    )
    assert_retry_hint(refused)
    assert served_for_another_key.hits
    assert still_held == [True] * per_key, "refused while the key's calls were in flight"
    assert all("02:00" in answer.answer for answer in answers)
    assert after.hits, "the key's slots were given back"
