"""Authentication and tenant isolation, on a gateway of this module's own with a keys file.

It runs beside the session stack and calls its embedder, retriever and generator,
so the session gateway (authentication off) is untouched. Also: a keys file that
breaks while the gateway runs (every key refused, NOT_SERVING, until it is valid
again), and the secure default (no keys, no listening beyond loopback).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway import keys
from gateway.access import NAMESPACE_FIELDS
from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from rag_cli.main import main
from rag_cli.stack import Stack
from services.common.registry import GATEWAY_UPSTREAMS, upstream_target_variable
from services.common.server import LIVENESS
from tests.e2e.replicas import Replicas
from tests.otlp_receiver import OtlpReceiver

NAME = "gateway-auth"
Metadata = tuple[tuple[str, str], ...]
# The span attribute that names the caller's key (never the key itself).
KEY_ID = "rag.gateway.api_key_id"
MALFORMED_NAMESPACE = "Team A!"


@dataclass(frozen=True)
class Tenants:
    gateway: gateway_pb2_grpc.GatewayServiceStub
    channel: grpc.Channel
    target: str
    keys_file: Path
    log: Path
    own: str  # key_a's namespace
    other: str  # key_b's namespace
    key_a: str
    key_b: str
    revoked: str

    def all_keys(self) -> list[str]:
        return [self.key_a, self.key_b, self.revoked]


def bearer(key: str) -> Metadata:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture(scope="module")
def tenants(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    directory = tmp_path_factory.mktemp("auth")
    keys_file = directory / "keys.json"
    suffix = secrets.token_hex(3)
    own, other = f"auth-a-{suffix}", f"auth-b-{suffix}"
    key_a = keys.create_key(keys_file, (own,), "team-a")
    key_b = keys.create_key(keys_file, (other,), "team-b")
    revoked = keys.create_key(keys_file, (own,), "gone")
    keys.revoke_key(keys_file, "gone")
    processes = Replicas(stack, directory)
    processes.start(
        [NAME],
        GATEWAY_API_KEYS_FILE=str(keys_file),
        GATEWAY_EMBEDDER_TARGET=stack.target("embedder"),
        GATEWAY_RETRIEVER_TARGET=stack.target("retriever"),
        GATEWAY_GENERATOR_TARGET=stack.target("generator"),
        # The most the gateway ever logs: the keys must not be in it either.
        GATEWAY_LOG_LEVEL="DEBUG",
    )
    try:
        with grpc.insecure_channel(processes.target(NAME)) as channel:
            yield Tenants(
                gateway_pb2_grpc.GatewayServiceStub(channel),
                channel,
                processes.target(NAME),
                keys_file,
                directory / "logs" / f"{NAME}.log",
                own,
                other,
                key_a,
                key_b,
                revoked,
            )
    finally:
        processes.stop()


def complete(call: Callable[[], object]) -> None:
    result = call()
    if not isinstance(result, Message):
        list(cast(Iterable[object], result))  # a stream fails when read


def rejection(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        complete(call)
    return raised.value


def code_and_details(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), error.details() or ""


def valid_requests(namespace: str) -> dict[str, Message]:
    """One request for each namespaced RPC, deletes both by id and by filter."""
    ask = gateway_pb2.AskRequest(namespace=namespace, question="When do backups run?")
    on_topic = common_pb2.MetadataFilter(
        field=common_pb2.FieldCondition(key="topic", equals=common_pb2.ScalarValue(string_value="x"))
    )
    document = gateway_pb2.Document(id="d", title="t", text="Some text to store.")
    judged = retriever_pb2.FeedbackItem(document_id="d", label=retriever_pb2.FEEDBACK_LABEL_RELEVANT)
    return {
        "Ask": ask,
        "AskStream": gateway_pb2.AskStreamRequest(request=ask),
        "Search": gateway_pb2.SearchRequest(namespace=namespace, query="backups"),
        "IngestDocuments": gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[document]),
        "DeleteDocuments(ids)": gateway_pb2.DeleteDocumentsRequest(namespace=namespace, document_ids=["d"]),
        "DeleteDocuments(filter)": gateway_pb2.DeleteDocumentsRequest(namespace=namespace, filter=on_topic),
        "ListDocuments": gateway_pb2.ListDocumentsRequest(namespace=namespace),
        "SubmitFeedback": gateway_pb2.SubmitFeedbackRequest(
            namespace=namespace, question="Is d relevant?", items=[judged]
        ),
        "ListFeedback": gateway_pb2.ListFeedbackRequest(namespace=namespace),
    }


def requests_wrong_but_for_the_namespace(namespace: str) -> dict[str, Message]:
    """One request for each namespaced RPC, each refused by its handler whatever the namespace."""
    empty_question = gateway_pb2.AskRequest(namespace=namespace, question=" ")
    return {
        "Ask": empty_question,
        "AskStream": gateway_pb2.AskStreamRequest(request=empty_question),
        "Search": gateway_pb2.SearchRequest(
            namespace=namespace, query="", retrieval=gateway_pb2.RetrievalOptions(top_k=0)
        ),
        "IngestDocuments": gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[]),
        "DeleteDocuments": gateway_pb2.DeleteDocumentsRequest(namespace=namespace),
        "ListDocuments": gateway_pb2.ListDocumentsRequest(namespace=namespace, page_size=-1),
        "SubmitFeedback": gateway_pb2.SubmitFeedbackRequest(namespace=namespace, question=" "),
        "ListFeedback": gateway_pb2.ListFeedbackRequest(namespace=namespace, page_size=-1),
    }


def calls(
    gateway: gateway_pb2_grpc.GatewayServiceStub, requests: dict[str, Message], metadata: Metadata
) -> dict[str, Callable[[], object]]:
    """Each request sent to the RPC it is for: AskStreamRequest to AskStream, and so on."""

    def call(request: Message) -> Callable[[], object]:
        rpc: Callable[..., object] = getattr(gateway, request.DESCRIPTOR.name.removesuffix("Request"))
        return lambda: rpc(request, metadata=metadata, timeout=60)

    return {label: call(request) for label, request in requests.items()}


def test_calls_without_a_valid_key_are_unauthenticated(tenants: Tenants) -> None:
    wrong_secret = tenants.key_a[:-4] + ("AAAA" if not tenants.key_a.endswith("AAAA") else "BBBB")
    attempts: dict[str, Metadata] = {
        "missing": (),
        "malformed": (("authorization", "Bearer not-a-key"),),
        "not bearer": (("authorization", f"Basic {tenants.key_a}"),),
        "wrong secret": bearer(wrong_secret),
        "unknown id": (("x-api-key", "rag_nobody_" + tenants.key_a.split("_", 2)[2]),),
        "revoked": bearer(tenants.revoked),
    }
    for attempt, metadata in attempts.items():
        for rpc, call in calls(tenants.gateway, valid_requests(tenants.own), metadata).items():
            code, details = code_and_details(rejection(call))
            assert code == grpc.StatusCode.UNAUTHENTICATED, (attempt, rpc, details)
            assert tenants.key_a not in details
            assert tenants.key_a.split("_", 2)[2] not in details


def test_health_and_reflection_need_no_key(tenants: Tenants) -> None:
    health = health_pb2_grpc.HealthStub(tenants.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    reflection = reflection_pb2_grpc.ServerReflectionStub(tenants.channel)
    (answer,) = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    names = {service.name for service in answer.list_services_response.service}
    assert "rag.gateway.v1.GatewayService" in names


def test_every_rpc_on_another_tenants_namespace_is_permission_denied(tenants: Tenants) -> None:
    for rpc, call in calls(tenants.gateway, valid_requests(tenants.other), bearer(tenants.key_a)).items():
        code, details = code_and_details(rejection(call))
        assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, details)
        assert repr(tenants.other) in details
        assert tenants.key_a not in details


def test_every_rpc_checks_the_key_then_the_namespace_then_the_grant_before_the_handler(
    tenants: Tenants,
) -> None:
    # Requests a handler would refuse: each status here comes from a check made before the handler.
    # Admission, between the key and the namespace, has room here (tests/e2e/test_admission.py fills it).
    cases = {
        "no key, malformed namespace": (MALFORMED_NAMESPACE, (), grpc.StatusCode.UNAUTHENTICATED),
        "valid key, malformed namespace": (
            MALFORMED_NAMESPACE,
            bearer(tenants.key_a),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "valid key, a namespace it does not grant": (
            tenants.other,
            bearer(tenants.key_a),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    }
    expected: dict[tuple[str, str], grpc.StatusCode] = {}
    outcomes: dict[tuple[str, str], grpc.StatusCode] = {}
    namespace_refusals: list[str] = []
    for case, (namespace, metadata, status) in cases.items():
        requests = requests_wrong_but_for_the_namespace(namespace)
        for rpc, call in calls(tenants.gateway, requests, metadata).items():
            code, details = code_and_details(rejection(call))
            expected[case, rpc] = status
            outcomes[case, rpc] = code
            if status == grpc.StatusCode.INVALID_ARGUMENT:
                namespace_refusals.append(details)

    assert outcomes == expected
    for details in namespace_refusals:
        assert "namespace must be lower-case" in details, details


# Field 1 announced as 5 bytes long, with 2 behind it: no message of any type parses.
UNDECODABLE = b"\x0a\x05ab"


def raw_call(channel: grpc.Channel, rpc: str, metadata: Metadata) -> Callable[[], object]:
    """`rpc` sent UNDECODABLE as its request, bytes as they are."""
    method = f"/{gateway_pb2.DESCRIPTOR.services_by_name['GatewayService'].full_name}/{rpc}"
    if rpc == "AskStream":
        streaming: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method)
        return lambda: streaming(UNDECODABLE, metadata=metadata, timeout=30)
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    return lambda: unary(UNDECODABLE, metadata=metadata, timeout=30)


def test_the_key_is_checked_before_the_request_is_read(tenants: Tenants) -> None:
    rpcs = list(NAMESPACE_FIELDS)
    without_key = [code_and_details(rejection(raw_call(tenants.channel, rpc, ()))) for rpc in rpcs]
    with_key = [
        code_and_details(rejection(raw_call(tenants.channel, rpc, bearer(tenants.key_a)))) for rpc in rpcs
    ]

    assert [code for code, _ in without_key] == [grpc.StatusCode.UNAUTHENTICATED] * len(rpcs)
    # The same bytes from a known caller are read, and found to be no message.
    assert [code for code, _ in with_key] == [grpc.StatusCode.INVALID_ARGUMENT] * len(rpcs)
    assert all("is not a valid message" in details for _, details in with_key)


def test_a_key_works_on_its_own_namespace_and_filters_cannot_reach_another(tenants: Tenants) -> None:
    def ingest(namespace: str, key: str, owner: str) -> None:
        metadata = struct_pb2.Struct()
        metadata.update({"namespace": owner, "owner": owner})
        document = gateway_pb2.Document(
            id=f"{owner}-runbook",
            title="backup runbook",
            text="The nightly PostgreSQL base backup runs at 02:00 UTC.",
            metadata=metadata,
        )
        tenants.gateway.IngestDocuments(
            gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[document]),
            metadata=bearer(key),
            timeout=120,
        )

    ingest(tenants.own, tenants.key_a, "a")
    ingest(tenants.other, tenants.key_b, "b")
    # A filter names metadata keys, never the namespace: "namespace" here is just a key.
    theirs = common_pb2.MetadataFilter(
        field=common_pb2.FieldCondition(
            key="namespace",
            in_values=common_pb2.ScalarList(values=[common_pb2.ScalarValue(string_value="b")]),
        )
    )
    found = tenants.gateway.Search(
        gateway_pb2.SearchRequest(
            namespace=tenants.own,
            query="When does the nightly backup run?",
            retrieval=gateway_pb2.RetrievalOptions(filter=theirs),
        ),
        metadata=bearer(tenants.key_a),
        timeout=60,
    )
    deleted = tenants.gateway.DeleteDocuments(
        gateway_pb2.DeleteDocumentsRequest(namespace=tenants.own, filter=theirs),
        metadata=bearer(tenants.key_a),
        timeout=60,
    )
    mine = tenants.gateway.ListDocuments(
        gateway_pb2.ListDocumentsRequest(namespace=tenants.own), metadata=bearer(tenants.key_a), timeout=60
    )
    their_documents = tenants.gateway.ListDocuments(
        gateway_pb2.ListDocumentsRequest(namespace=tenants.other), metadata=bearer(tenants.key_b), timeout=60
    )
    answer = tenants.gateway.Ask(
        gateway_pb2.AskRequest(namespace=tenants.own, question="When does the nightly backup run?"),
        metadata=bearer(tenants.key_a),
        timeout=120,
    )

    assert list(found.hits) == []
    assert deleted.deleted_documents == 0
    assert [d.document_id for d in mine.documents] == ["a-runbook"]
    assert [d.document_id for d in their_documents.documents] == ["b-runbook"]
    assert {s.hit.document_id for s in answer.sources} <= {"a-runbook"}


def test_feedback_is_submitted_and_listed_only_in_a_namespace_the_key_grants(tenants: Tenants) -> None:
    def submit(namespace: str, key: str, question: str) -> Callable[[], object]:
        judged = retriever_pb2.FeedbackItem(
            document_id="judged", chunk_index=0, label=retriever_pb2.FEEDBACK_LABEL_RELEVANT
        )
        request = gateway_pb2.SubmitFeedbackRequest(namespace=namespace, question=question, items=[judged])
        return lambda: tenants.gateway.SubmitFeedback(request, metadata=bearer(key), timeout=60)

    def listing(namespace: str, key: str) -> Callable[[], gateway_pb2.ListFeedbackResponse]:
        request = gateway_pb2.ListFeedbackRequest(namespace=namespace)
        return lambda: tenants.gateway.ListFeedback(request, metadata=bearer(key), timeout=60)

    for namespace, key in ((tenants.own, tenants.key_a), (tenants.other, tenants.key_b)):
        document = gateway_pb2.Document(id="judged", title="judged", text="Feedback judges this document.")
        tenants.gateway.IngestDocuments(
            gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[document]),
            metadata=bearer(key),
            timeout=120,
        )
    submit(tenants.own, tenants.key_a, "mine?")()
    submit(tenants.other, tenants.key_b, "theirs?")()

    refused = [
        code_and_details(rejection(call))
        for call in (
            submit(tenants.other, tenants.key_a, "into theirs?"),
            listing(tenants.other, tenants.key_a),
            submit(tenants.own, tenants.key_b, "into mine?"),
            listing(tenants.own, tenants.key_b),
        )
    ]
    mine = listing(tenants.own, tenants.key_a)()
    theirs = listing(tenants.other, tenants.key_b)()

    assert [code for code, _ in refused] == [grpc.StatusCode.PERMISSION_DENIED] * 4
    assert all(repr(tenants.other) in details for _, details in refused[:2])
    assert [f.question for f in mine.feedback] == ["mine?"]
    assert [f.question for f in theirs.feedback] == ["theirs?"]


def test_the_cli_sends_the_key_from_the_option_or_rag_api_key(
    tenants: Tenants, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--gateway", tenants.target, "-n", tenants.own]
    without = main([*target, "documents"])
    refused = capsys.readouterr().err
    with_option = main([*target, "--api-key", tenants.key_a, "documents"])
    monkeypatch.setenv("RAG_API_KEY", tenants.key_a)
    from_environment = main([*target, "documents"])

    assert without == 2
    assert "UNAUTHENTICATED" in refused
    assert with_option == 0
    assert from_environment == 0


def test_eval_sends_the_key_too(
    tenants: Tenants, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluate = [
        "--gateway",
        tenants.target,
        "eval",
        str(dataset_dir),
        "--namespace",
        tenants.own,
        "--limit",
        "1",
    ]
    monkeypatch.delenv("RAG_API_KEY", raising=False)
    without = main(evaluate)
    refused = capsys.readouterr().err
    scored = main(["--api-key", tenants.key_a, *evaluate])

    assert without == 2
    assert "UNAUTHENTICATED" in refused
    assert scored == 0, capsys.readouterr().err


def test_revocation_takes_effect_without_a_restart(tenants: Tenants) -> None:
    key = keys.create_key(tenants.keys_file, (tenants.own,), f"short-{secrets.token_hex(2)}")
    listing = gateway_pb2.ListDocumentsRequest(namespace=tenants.own)
    tenants.gateway.ListDocuments(listing, metadata=bearer(key), timeout=30)

    keys.revoke_key(tenants.keys_file, keys.key_id_of(key) or "")
    error = rejection(lambda: tenants.gateway.ListDocuments(listing, metadata=bearer(key), timeout=30))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_broken_keys_file_refuses_every_key_and_reports_not_serving_until_it_is_fixed(
    tenants: Tenants,
) -> None:
    listing = gateway_pb2.ListDocumentsRequest(namespace=tenants.own)
    health = health_pb2_grpc.HealthStub(tenants.channel)
    valid = tenants.keys_file.read_text()

    def list_with(key: str) -> Callable[[], object]:
        return lambda: tenants.gateway.ListDocuments(listing, metadata=bearer(key), timeout=30)

    # Health changes, as the gateway reports them: the first is the status now.
    changes = health.Watch(health_pb2.HealthCheckRequest(), timeout=120)
    try:
        before = next(changes).status
        tenants.keys_file.write_text("{not json")  # as a hand edit gone wrong would leave it
        while_broken = {key: rejection(list_with(key)) for key in (tenants.revoked, tenants.key_a)}
        reported_broken = next(changes).status
        # The process still answers: a liveness probe must not restart it into a failing start-up.
        alive_while_broken = health.Check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=30).status
        tenants.keys_file.write_text(valid)
        reported_fixed = next(changes).status
        tenants.gateway.ListDocuments(listing, metadata=bearer(tenants.key_a), timeout=30)  # served again
        revoked_again = rejection(list_with(tenants.revoked))
    finally:
        changes.cancel()
        tenants.keys_file.write_text(valid)

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert before == serving
    for key, error in while_broken.items():
        assert error.code() == grpc.StatusCode.UNAVAILABLE, "no key works while the file is broken"
        assert "the API keys file cannot be read" in (error.details() or "")
        assert key not in (error.details() or "")
        trailing = {metadatum.key: metadatum.value for metadatum in error.trailing_metadata() or ()}
        assert int(trailing["grpc-retry-pushback-ms"]) == keys.KEYS_RETRY_AFTER_MS
    assert reported_broken == not_serving
    assert alive_while_broken == serving
    assert reported_fixed == serving
    assert revoked_again.code() == grpc.StatusCode.UNAUTHENTICATED
    logged = tenants.log.read_text(errors="replace")
    assert logged.count(f"the API keys file {tenants.keys_file} cannot be read") == 1
    assert logged.count(f"the API keys file {tenants.keys_file} is valid again") == 1


def test_a_gateway_beyond_loopback_without_keys_starts_only_when_told_to(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    processes = Replicas(stack, tmp_path_factory.mktemp("open-gateway"))
    everywhere = "0.0.0.0"  # what a container listens on: the case under test
    upstreams = {upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS}
    try:
        with pytest.raises(RuntimeError) as refused:
            processes.start(["gateway-refused"], GATEWAY_HOST=everywhere, **upstreams)
        processes.start(
            ["gateway-allowed"], GATEWAY_HOST=everywhere, GATEWAY_ALLOW_UNAUTHENTICATED="true", **upstreams
        )
        with grpc.insecure_channel(processes.target("gateway-allowed")) as channel:
            # Served, without a key: raises otherwise.
            gateway_pb2_grpc.GatewayServiceStub(channel).ListDocuments(
                gateway_pb2.ListDocumentsRequest(namespace="default"), timeout=30
            )
        warned = processes.log_tail("gateway-allowed", lines=200)
    finally:
        processes.stop()

    message = str(refused.value)
    assert "gateway-refused exited with code 1" in message
    assert "GATEWAY_API_KEYS_FILE is not set" in message
    assert "GATEWAY_ALLOW_UNAUTHENTICATED=true" in message
    assert (
        f"authentication is OFF: GATEWAY_API_KEYS_FILE is not set, any caller that reaches {everywhere}"
        in warned
    )


def test_keys_never_appear_in_logs_or_spans(tenants: Tenants, otlp_receiver: OtlpReceiver) -> None:
    # A key of its own goes last: once its last call's span is in, the spans
    # of all calls before it are too (the gateway exports them in order).
    last = keys.create_key(tenants.keys_file, (tenants.own,), f"last-{secrets.token_hex(2)}")
    last_id = keys.key_id_of(last)
    used = [*tenants.all_keys(), last]
    # Calls of every outcome, so each is logged and traced.
    for key in used:
        for call in calls(tenants.gateway, valid_requests(tenants.own), bearer(key)).values():
            with contextlib.suppress(grpc.RpcError):
                complete(call)
    spans = otlp_receiver.wait_for(
        lambda spans: any(
            s.instance_id == NAME
            and s.name.endswith("/ListDocuments")
            and s.attributes.get(KEY_ID) == last_id
            for s in spans
        )
    )
    key_ids = {s.attributes.get(KEY_ID) for s in spans if s.instance_id == NAME}
    assert {"team-a", "team-b", last_id} <= key_ids, "spans name the caller's key by its id"
    exported = repr([(s.name, s.attributes) for s in spans])
    logged = tenants.log.read_text(errors="replace")
    assert "authentication on" in logged
    for key in used:
        secret = key.split("_", 2)[2]
        assert secret not in logged
        assert secret not in exported
