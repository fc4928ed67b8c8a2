"""The Python client (clients/python) against real processes: the session stack, and a gateway of this
module's own that requires an API key and a client certificate (mTLS).

Every RPC through RagClient and through AsyncRagClient; failures as RagError
with what the gateway put in them (field violations, the retry delay).
"""

from __future__ import annotations

import contextlib
import datetime
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gateway.keys import KEYS_RETRY_AFTER_MS, create_key
from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2
from rag.retriever.v1 import retriever_pb2
from rag_cli.stack import Stack, free_port
from rag_client import (
    AsyncRagClient,
    FieldViolation,
    InvalidArgument,
    PlaintextKeyRefused,
    RagClient,
    RagError,
    Tls,
    Unauthenticated,
    Unavailable,
    document_from_path,
    file_document,
    text_document,
)
from services.common.registry import GATEWAY, GATEWAY_UPSTREAMS, upstream_target_variable
from services.common.tls import ClientTls
from tests.conftest import SAMPLES
from tests.e2e.test_tls import make_pki, wait_until_serving_tls

RUNBOOK = "postgres-backup-runbook.md"
QUESTION = "When does the nightly base backup run?"
PARKING = "parking.html"
PARKING_HTML = (
    b"<html><head><title>Parking rules</title></head><body>"
    b"<p>Visitors park on level minus two of the garage, in bays 40 to 60.</p></body></html>"
)
NOTE = "kitchen-note"


def documents() -> list[gateway_pb2.Document]:
    """A file from disk, file bytes with a name, and text with metadata."""
    return [
        document_from_path(SAMPLES / RUNBOOK),
        file_document(PARKING, PARKING_HTML, filename=PARKING),
        text_document(
            NOTE, "The coffee machine is descaled every Friday.", title="Kitchen", metadata={"team": "ops"}
        ),
    ]


def check_ingested(response: gateway_pb2.IngestDocumentsResponse) -> None:
    assert [result.document_id for result in response.results] == [RUNBOOK, PARKING, NOTE]
    assert {result.status for result in response.results} == {retriever_pb2.UPSERT_STATUS_CREATED}
    assert all(result.chunk_count > 0 for result in response.results)


def check_answer(answer: gateway_pb2.AskResponse) -> None:
    assert answer.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    assert "02:00 UTC" in answer.answer
    assert {citation.document_id for citation in answer.citations} == {RUNBOOK}


def check_stream(events: list[gateway_pb2.AskStreamResponse]) -> None:
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "sources"
    assert kinds[-1] == "final"
    assert set(kinds[1:-1]) == {"delta"}
    assert "".join(event.delta.text for event in events[1:-1]) == events[-1].final.answer
    check_answer(events[-1].final)


def check_search(response: gateway_pb2.SearchResponse) -> None:
    assert [hit.document_id for hit in response.hits] == [PARKING]
    assert response.hits[0].title == "Parking rules", "the gateway took the HTML file's own title"


SEARCH = "Where do visitors park their car?"
TOP_1 = gateway_pb2.RetrievalOptions(top_k=1)
BAD_TOP_K = gateway_pb2.RetrievalOptions(top_k=0)


@pytest.fixture
def client(stack: Stack) -> Iterator[RagClient]:
    with RagClient(stack.gateway_target) as client:
        yield client


def test_sync_client_ingests_asks_streams_searches_lists_and_deletes(
    client: RagClient, namespace: str
) -> None:
    check_ingested(client.ingest_documents(namespace, documents()))
    check_answer(client.ask(namespace, QUESTION))
    check_stream(list(client.ask_stream(namespace, QUESTION, skip_cache=True)))
    check_search(client.search(namespace, SEARCH, retrieval=TOP_1))

    first_page = client.list_documents(namespace, page_size=2)
    assert [d.document_id for d in first_page.documents] == sorted([RUNBOOK, PARKING, NOTE])[:2]
    assert first_page.next_page_token
    every = [d.document_id for d in client.iter_documents(namespace, page_size=2)]
    assert every == sorted([RUNBOOK, PARKING, NOTE])

    deleted = client.delete_documents(namespace, [NOTE])
    assert deleted.deleted_documents == 1
    assert deleted.deleted_chunks > 0
    assert sorted(d.document_id for d in client.iter_documents(namespace)) == sorted([RUNBOOK, PARKING])


async def test_async_client_ingests_asks_streams_searches_lists_and_deletes(
    stack: Stack, namespace: str
) -> None:
    async with AsyncRagClient(stack.gateway_target) as client:
        check_ingested(await client.ingest_documents(namespace, documents()))
        check_answer(await client.ask(namespace, QUESTION))
        check_stream([event async for event in client.ask_stream(namespace, QUESTION, skip_cache=True)])
        check_search(await client.search(namespace, SEARCH, retrieval=TOP_1))

        first_page = await client.list_documents(namespace, page_size=2)
        assert len(first_page.documents) == 2
        every = [d.document_id async for d in client.iter_documents(namespace, page_size=2)]
        assert every == sorted([RUNBOOK, PARKING, NOTE])

        deleted = await client.delete_documents(namespace, [NOTE, PARKING])
        assert deleted.deleted_documents == 2
        assert [d.document_id async for d in client.iter_documents(namespace)] == [RUNBOOK]


def judged(hit: retriever_pb2.SearchHit) -> list[retriever_pb2.FeedbackItem]:
    return [
        retriever_pb2.FeedbackItem(
            document_id=hit.document_id,
            chunk_index=hit.chunk_index,
            label=retriever_pb2.FEEDBACK_LABEL_RELEVANT,
        )
    ]


def test_sync_client_submits_and_lists_feedback(client: RagClient, namespace: str) -> None:
    client.ingest_documents(namespace, documents())
    (hit,) = client.search(namespace, SEARCH, retrieval=TOP_1).hits
    good = client.submit_feedback(
        namespace, SEARCH, judged(hit), answer_rating=retriever_pb2.ANSWER_RATING_GOOD
    )
    unrated = [client.submit_feedback(namespace, f"{SEARCH} ({i})", judged(hit)) for i in range(2)]

    first_page = client.list_feedback(namespace, page_size=2)
    every = list(client.iter_feedback(namespace, page_size=2))
    with pytest.raises(InvalidArgument) as refused:
        client.submit_feedback(namespace, SEARCH, [])

    assert good.item_count == 1
    assert [f.feedback_id for f in first_page.feedback] == [good.feedback_id, unrated[0].feedback_id]
    assert first_page.next_page_token
    assert [f.feedback_id for f in every] == [good.feedback_id, *(u.feedback_id for u in unrated)]
    assert every[0].items[0].document_id == PARKING
    assert every[0].answer_rating == retriever_pb2.ANSWER_RATING_GOOD
    assert not every[1].HasField("answer_rating")
    assert refused.value.field_violations == (FieldViolation("items (count)", refused.value.message),)
    assert refused.value.message == "retriever: items (count) must be 1..1000, got 0"


async def test_async_client_submits_and_lists_feedback(stack: Stack, namespace: str) -> None:
    async with AsyncRagClient(stack.gateway_target) as client:
        await client.ingest_documents(namespace, documents())
        (hit,) = (await client.search(namespace, SEARCH, retrieval=TOP_1)).hits
        stored = [await client.submit_feedback(namespace, f"{SEARCH} ({i})", judged(hit)) for i in range(3)]
        rated = await client.submit_feedback(
            namespace, SEARCH, judged(hit), answer_rating=retriever_pb2.ANSWER_RATING_BAD
        )

        first_page = await client.list_feedback(namespace, page_size=3)
        every = [f async for f in client.iter_feedback(namespace, page_size=3)]

    assert [f.feedback_id for f in first_page.feedback] == [s.feedback_id for s in stored]
    assert [f.feedback_id for f in every] == [*(s.feedback_id for s in stored), rated.feedback_id]
    assert every[-1].answer_rating == retriever_pb2.ANSWER_RATING_BAD


def test_sync_stream_read_in_part_leaves_the_client_usable(client: RagClient, namespace: str) -> None:
    client.ingest_documents(namespace, documents()[:1])
    with contextlib.closing(client.ask_stream(namespace, QUESTION, skip_cache=True)) as events:
        first = next(events)
    assert first.WhichOneof("event") == "sources"
    # The channel is still good for the next call.
    check_answer(client.ask(namespace, QUESTION))


def check_top_k_violation(error: RagError, field: str = "retrieval.top_k") -> None:
    """`field` is the path in the request sent: AskStream's holds an AskRequest under `request`."""
    assert isinstance(error, InvalidArgument)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == (FieldViolation(field, error.message),)
    assert error.message.startswith(f"{field} must be")
    assert error.retry_delay is None


def test_bad_request_is_a_rag_error_with_the_field_violation(client: RagClient, namespace: str) -> None:
    with pytest.raises(RagError) as unary:
        client.search(namespace, SEARCH, retrieval=BAD_TOP_K)
    check_top_k_violation(unary.value)
    # A stream fails when read, with the same error.
    with pytest.raises(RagError) as streamed:
        list(client.ask_stream(namespace, QUESTION, retrieval=BAD_TOP_K))
    check_top_k_violation(streamed.value, "request.retrieval.top_k")


async def test_async_bad_request_is_a_rag_error_with_the_field_violation(
    stack: Stack, namespace: str
) -> None:
    async with AsyncRagClient(stack.gateway_target) as client:
        with pytest.raises(RagError) as unary:
            await client.ask(namespace, QUESTION, retrieval=BAD_TOP_K)
        check_top_k_violation(unary.value)
        with pytest.raises(RagError) as streamed:
            _ = [event async for event in client.ask_stream(namespace, QUESTION, retrieval=BAD_TOP_K)]
        check_top_k_violation(streamed.value, "request.retrieval.top_k")


def test_default_deadline_applies_unless_a_call_gives_its_own(stack: Stack, namespace: str) -> None:
    # A default of 0 s: every call that gives no deadline has expired before it starts.
    with RagClient(stack.gateway_target, timeout_s=0) as client:
        with pytest.raises(RagError) as late:
            client.list_documents(namespace)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert not client.list_documents(namespace, timeout_s=60).documents


def test_api_key_is_not_sent_in_plaintext_to_another_machine() -> None:
    with pytest.raises(PlaintextKeyRefused, match="allow_plaintext_key"):
        RagClient("gateway.example.com:50050", api_key="rag_a_secret")
    # Loopback, TLS, or an explicit allowance are fine; no call is made.
    RagClient("127.0.0.1:50050", api_key="rag_a_secret").close()
    RagClient("gateway.example.com:50050", api_key="rag_a_secret", allow_plaintext_key=True).close()


# --- a gateway that wants an API key and a client certificate ----------------------------------

NAME = "gateway-secured"


@dataclass(frozen=True)
class Secured:
    target: str  # localhost: the name the gateway's certificate carries
    keys_file: Path
    namespace: str
    key: str
    tls: Tls  # with the client certificate


@pytest.fixture(scope="module")
def secured(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    directory = tmp_path_factory.mktemp("secured-gateway")
    pki = make_pki(directory / "pki")
    keys_file = directory / "keys.json"
    namespace = "python-client"
    key = create_key(keys_file, (namespace,), "python-client")
    port = free_port()
    processes = Stack(data_dir=directory, ports={NAME: port}, grace_period_s=1.0)
    processes.log_path("any").parent.mkdir(parents=True)
    prefix = GATEWAY.env_prefix
    environment = {
        **stack.shared_environment(),
        **processes.listening_environment(GATEWAY, port),
        **{upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS},
        f"{prefix}API_KEYS_FILE": str(keys_file),
        f"{prefix}TLS_CERT_FILE": str(pki.gateway[0]),
        f"{prefix}TLS_KEY_FILE": str(pki.gateway[1]),
        f"{prefix}TLS_CLIENT_CA_FILE": str(pki.ca),
    }
    try:
        processes.start_service(NAME, GATEWAY.module, environment)
        probe = ClientTls(pki.ca, pki.client[0], pki.client[1])
        wait_until_serving_tls(processes, NAME, probe, time.monotonic() + 180)
        tls = Tls(ca_file=pki.ca, cert_file=pki.client[0], key_file=pki.client[1])
        yield Secured(f"localhost:{port}", keys_file, namespace, key, tls)
    finally:
        processes.stop()


def test_key_and_client_certificate_let_the_call_in(secured: Secured) -> None:
    with RagClient(secured.target, api_key=secured.key, tls=secured.tls) as client:
        client.ingest_documents(secured.namespace, documents()[:1])
        check_answer(client.ask(secured.namespace, QUESTION))


async def test_async_key_and_client_certificate_let_the_call_in(secured: Secured) -> None:
    async with AsyncRagClient(secured.target, api_key=secured.key, tls=secured.tls) as client:
        client_documents = [d async for d in client.iter_documents(secured.namespace)]
    # The sync test may or may not have run first: the call was let in either way.
    assert {d.document_id for d in client_documents} <= {RUNBOOK}


def test_wrong_api_key_is_unauthenticated(secured: Secured) -> None:
    with RagClient(secured.target, api_key="rag_nobody_x", tls=secured.tls) as client:
        with pytest.raises(RagError) as refused:
            client.search(secured.namespace, QUESTION)
        assert isinstance(refused.value, Unauthenticated)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(Unauthenticated):
            list(client.ask_stream(secured.namespace, QUESTION))
    with RagClient(secured.target, tls=secured.tls) as no_key, pytest.raises(Unauthenticated) as missing:
        no_key.list_documents(secured.namespace)
    assert "missing API key" in missing.value.message


async def test_async_wrong_api_key_is_unauthenticated(secured: Secured) -> None:
    async with AsyncRagClient(secured.target, api_key="rag_nobody_x", tls=secured.tls) as client:
        with pytest.raises(Unauthenticated) as refused:
            await client.ask(secured.namespace, QUESTION)
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_without_a_client_certificate_the_handshake_fails(secured: Secured) -> None:
    tls_only = Tls(ca_file=secured.tls.ca_file)
    with (
        RagClient(secured.target, api_key=secured.key, tls=tls_only, timeout_s=10) as client,
        pytest.raises(Unavailable),
    ):
        client.list_documents(secured.namespace)


@contextlib.contextmanager
def broken(keys_file: Path) -> Iterator[None]:
    """The keys file unreadable for a while: the gateway refuses every key until it is back."""
    content = keys_file.read_bytes()
    keys_file.write_text("{ not json")
    try:
        yield
    finally:
        keys_file.write_bytes(content)


def test_retry_delay_comes_from_the_gateway(secured: Secured) -> None:
    with RagClient(secured.target, api_key=secured.key, tls=secured.tls) as client:
        with broken(secured.keys_file), pytest.raises(Unavailable) as refused:
            client.list_documents(secured.namespace)
        assert refused.value.retry_delay == datetime.timedelta(milliseconds=KEYS_RETRY_AFTER_MS)
        assert refused.value.field_violations == ()
        # Back to normal as soon as the file is.
        client.list_documents(secured.namespace)


async def test_async_retry_delay_comes_from_the_gateway(secured: Secured) -> None:
    async with AsyncRagClient(secured.target, api_key=secured.key, tls=secured.tls) as client:
        with broken(secured.keys_file), pytest.raises(Unavailable) as refused:
            await client.search(secured.namespace, QUESTION)
    assert refused.value.retry_delay == datetime.timedelta(milliseconds=KEYS_RETRY_AFTER_MS)
