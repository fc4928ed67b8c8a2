"""The client's channel and error decoding against a small gateway servicer of the test's own.

The real gateway cannot be made to fail with UNAVAILABLE on cue, nor to send
several field violations at once; this servicer, on a real gRPC server, does
both, and counts the attempts that reach it, so the retry policy the client
declares in its service config is seen working (and not working where it must
not: other codes, retry=None).
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_client import (
    AsyncRagClient,
    ClientConfigError,
    FieldViolation,
    InvalidArgument,
    RagClient,
    RagError,
    RetryPolicy,
    Tls,
    Unavailable,
)
from rag_client.targets import is_loopback_host
from services.common.loopback import is_loopback_host as gateway_is_loopback_host

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class Scripted(gateway_pb2_grpc.GatewayServiceServicer):
    """A gateway that fails on cue.

    ListDocuments refuses the first `refusals` attempts with `code`, then
    answers, counting attempts; Search refuses with a google.rpc.Status holding
    two field violations and a retry delay; Ask refuses with details whose code
    is not the call's. The other RPCs are not needed here.
    """

    def __init__(self, refusals: int = 0, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        self.refusals = refusals
        self.code = code
        self.attempts = 0
        self.metadata: list[tuple[str, str | bytes]] = []
        self._lock = threading.Lock()

    def ListDocuments(
        self, request: gateway_pb2.ListDocumentsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListDocumentsResponse:
        with self._lock:
            self.attempts += 1
            attempt = self.attempts
        self.metadata = list(context.invocation_metadata())
        if attempt <= self.refusals:
            context.abort(self.code, f"attempt {attempt} refused")
        return gateway_pb2.ListDocumentsResponse(next_page_token=f"answered attempt {attempt}")

    def Search(
        self, request: gateway_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.SearchResponse:
        violations = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="query", description="blank"),
                error_details_pb2.BadRequest.FieldViolation(field="retrieval.top_k", description="got 0"),
            ]
        )
        retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
        details = [any_pb2.Any(), any_pb2.Any()]
        details[0].Pack(violations)
        details[1].Pack(retry)
        status = status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT, message="two things wrong", details=details
        )
        context.abort_with_status(rpc_status.to_status(status))

    def Ask(self, request: gateway_pb2.AskRequest, context: grpc.ServicerContext) -> gateway_pb2.AskResponse:
        # Details whose code is not the call's: not this call's details, so not reported.
        status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="stale details")
        context.set_trailing_metadata(((STATUS_DETAILS_KEY, status.SerializeToString()),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call's own message")

    def AskStream(
        self, request: gateway_pb2.AskStreamRequest, context: grpc.ServicerContext
    ) -> Iterator[gateway_pb2.AskStreamResponse]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    def IngestDocuments(
        self, request: gateway_pb2.IngestDocumentsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.IngestDocumentsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    def DeleteDocuments(
        self, request: gateway_pb2.DeleteDocumentsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.DeleteDocumentsResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    def SubmitFeedback(
        self, request: gateway_pb2.SubmitFeedbackRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.SubmitFeedbackResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")

    def ListFeedback(
        self, request: gateway_pb2.ListFeedbackRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListFeedbackResponse:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")


@contextmanager
def serving(servicer: Scripted) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_unavailable_is_retried_by_the_channel() -> None:
    servicer = Scripted(refusals=2)
    with serving(servicer) as target, RagClient(target) as client:
        page = client.list_documents("ns")
    assert page.next_page_token == "answered attempt 3"
    assert servicer.attempts == 3


def test_retries_stop_at_max_attempts() -> None:
    servicer = Scripted(refusals=5)
    with (
        serving(servicer) as target,
        RagClient(target, retry=RetryPolicy(max_attempts=4)) as client,
        pytest.raises(Unavailable) as refused,
    ):
        client.list_documents("ns")
    assert refused.value.message == "attempt 4 refused"
    assert servicer.attempts == 4


def test_no_retry_policy_means_one_attempt() -> None:
    servicer = Scripted(refusals=1)
    with (
        serving(servicer) as target,
        RagClient(target, retry=None) as client,
        pytest.raises(Unavailable),
    ):
        client.list_documents("ns")
    assert servicer.attempts == 1


def test_other_codes_are_not_retried() -> None:
    servicer = Scripted(refusals=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    with (
        serving(servicer) as target,
        RagClient(target) as client,
        pytest.raises(RagError) as refused,
    ):
        client.list_documents("ns")
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert servicer.attempts == 1


async def test_async_client_retries_unavailable_too() -> None:
    servicer = Scripted(refusals=2)
    with serving(servicer) as target:
        async with AsyncRagClient(target) as client:
            page = await client.list_documents("ns")
    assert page.next_page_token == "answered attempt 3"


def test_api_key_goes_as_a_bearer_token() -> None:
    servicer = Scripted(refusals=0)
    with serving(servicer) as target, RagClient(target, api_key="rag_k_secret") as client:
        client.list_documents("ns")
    assert ("authorization", "Bearer rag_k_secret") in servicer.metadata


def test_every_field_violation_and_the_retry_delay_are_decoded() -> None:
    with (
        serving(Scripted()) as target,
        RagClient(target) as client,
        pytest.raises(InvalidArgument) as refused,
    ):
        client.search("ns", "q")
    assert refused.value.message == "two things wrong"
    assert refused.value.field_violations == (
        FieldViolation("query", "blank"),
        FieldViolation("retrieval.top_k", "got 0"),
    )
    assert refused.value.retry_delay == datetime.timedelta(seconds=2.5)
    assert str(refused.value) == "[INVALID_ARGUMENT] two things wrong"


async def test_async_errors_are_decoded_alike() -> None:
    with serving(Scripted()) as target:
        async with AsyncRagClient(target) as client:
            with pytest.raises(InvalidArgument) as refused:
                await client.search("ns", "q")
    assert [violation.field for violation in refused.value.field_violations] == ["query", "retrieval.top_k"]
    assert refused.value.retry_delay == datetime.timedelta(seconds=2.5)


def test_details_that_contradict_the_call_are_left_out() -> None:
    with (
        serving(Scripted()) as target,
        RagClient(target) as client,
        pytest.raises(InvalidArgument) as refused,
    ):
        client.ask("ns", "q")
    assert refused.value.message == "the call's own message"
    assert refused.value.field_violations == ()
    assert refused.value.retry_delay is None


def test_tls_files_are_read_when_the_client_is_made(tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.crt"
    with pytest.raises(ClientConfigError, match=f"Tls.ca_file={missing}: cannot read"):
        RagClient("localhost:1", tls=Tls(ca_file=missing))
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate")
    with pytest.raises(ClientConfigError, match="not a PEM file"):
        AsyncRagClient("localhost:1", tls=Tls(ca_file=not_pem))
    with pytest.raises(ClientConfigError, match="both cert_file and key_file"):
        Tls(ca_file=not_pem, cert_file=not_pem)


def test_retry_policy_within_grpcs_limits() -> None:
    with pytest.raises(ClientConfigError, match="got 6"):
        RetryPolicy(max_attempts=6)
    with pytest.raises(ClientConfigError, match="initial_backoff_s <= max_backoff_s"):
        RetryPolicy(initial_backoff_s=2, max_backoff_s=1)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1.2.3",
        "localhost",
        "LOCALHOST",
        "[::1]",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "gateway.example.com",
        "10.0.0.1",
        "::ffff:10.0.0.1",
        "localhost.example.com",
    ],
)
def test_loopback_rule_is_the_gateways(host: str) -> None:
    # The `rag` CLI uses this client's rule (tests/test_cli_client.py checks its targets); the
    # gateway starts without keys only on a host its own rule calls loopback.
    assert is_loopback_host(host) == gateway_is_loopback_host(host)
