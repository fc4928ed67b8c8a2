"""Request caps through the running system: metadata bytes, chat history, filter size, and
PDF parsing in bounded workers that end with the file, the call's deadline or its cancellation.

The parsing tests run gateways of their own (beside the session stack, sharing its
embedder, retriever and generator) with parse limits of the test's choosing. One has
a ten-minute parse time limit, so a worker that ends sooner was ended by its call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from google.protobuf import struct_pb2

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.retriever.v1 import retriever_pb2
from rag_cli.stack import Stack, free_port
from services.common.limits import MAX_HISTORY_TURN_CHARS, MAX_METADATA_BYTES
from services.common.registry import GATEWAY, GATEWAY_UPSTREAMS, upstream_target_variable
from tests.test_caps_parsing import memory_hungry_pdf, slow_pdf
from tests.test_formats import PAGES, make_pdf

# How long a worker may take to be gone once its call has ended: a bound for a failing test only.
GONE_WITHIN_S = 60


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


def test_metadata_over_the_limit_is_refused(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"notes": "x" * MAX_METADATA_BYTES})
    document = gateway_pb2.Document(id="doc", text="Lamp bulbs.", metadata=metadata)
    request = gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[document])

    error = _refused(lambda: gateway.IngestDocuments(request))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(
        f"documents[0].metadata is {MAX_METADATA_BYTES + 12} bytes as JSON"
    )
    assert "(GATEWAY_MAX_METADATA_BYTES)" in (error.details() or "")


def test_history_over_the_limit_is_refused(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    turn = common_pb2.ChatTurn(role=common_pb2.CHAT_ROLE_USER, content="x" * (MAX_HISTORY_TURN_CHARS + 1))
    ask = gateway_pb2.AskRequest(namespace=namespace, question="When do backups run?", history=[turn])

    error = _refused(lambda: gateway.Ask(ask))
    streamed = _refused(lambda: list(gateway.AskStream(gateway_pb2.AskStreamRequest(request=ask))))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "history[0].content must be at most 8000 characters, got 8001"
    assert streamed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert streamed.details() == "request.history[0].content must be at most 8000 characters, got 8001"


def _exists(key: str) -> common_pb2.MetadataFilter:
    return common_pb2.MetadataFilter(field=common_pb2.FieldCondition(key=key, exists=True))


def test_a_filter_of_100000_conditions_is_refused(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    huge = common_pb2.MetadataFilter(
        any_of=common_pb2.FilterList(filters=[_exists(f"k{i}") for i in range(100_000)])
    )
    search = gateway_pb2.SearchRequest(
        namespace=namespace, query="lamp bulbs", retrieval=gateway_pb2.RetrievalOptions(filter=huge)
    )
    delete = gateway_pb2.DeleteDocumentsRequest(namespace=namespace, filter=huge)

    for error in (
        _refused(lambda: gateway.Search(search)),
        _refused(lambda: gateway.DeleteDocuments(delete)),
    ):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The retriever's check, passed on by the gateway with the dependency's name.
        assert (error.details() or "").endswith("filter may hold at most 64 conditions, got more")


# --- parsing in bounded workers ---


@dataclass
class OwnGateway:
    stub: gateway_pb2_grpc.GatewayServiceStub
    pid: int

    def workers(self) -> list[psutil.Process]:
        """The gateway's parse workers: the children of its forkserver, its only child with children."""
        return [worker for child in psutil.Process(self.pid).children() for worker in child.children()]

    def worker_of(self, call: grpc.Future[gateway_pb2.IngestDocumentsResponse]) -> psutil.Process:
        """The worker parsing the one file of `call`, once it runs."""
        while not (workers := self.workers()):
            assert not call.done(), "the call ended before its worker was seen"
            time.sleep(0.01)
        (worker,) = workers
        return worker


@contextmanager
def _own_gateway(stack: Stack, data_dir: Path, **settings: str) -> Iterator[OwnGateway]:
    processes = Stack(data_dir=data_dir, ports={GATEWAY.name: free_port()}, grace_period_s=1.0)
    processes.log_path(GATEWAY.name).parent.mkdir(parents=True)
    environment = {
        **stack.shared_environment(),
        **processes.listening_environment(GATEWAY, processes.ports[GATEWAY.name]),
        **{upstream_target_variable(upstream): stack.target(upstream.name) for upstream in GATEWAY_UPSTREAMS},
        **settings,
    }
    processes.start_service(GATEWAY.name, GATEWAY.module, environment)
    try:
        processes.wait_until_serving(GATEWAY.name, deadline=time.monotonic() + 120)
        with grpc.insecure_channel(processes.gateway_target) as channel:
            yield OwnGateway(
                gateway_pb2_grpc.GatewayServiceStub(channel), processes.process(GATEWAY.name).pid
            )
    finally:
        processes.stop_service(GATEWAY.name)


@pytest.fixture(scope="module")
def patient_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnGateway]:
    """Parses may take ten minutes: a worker gone sooner was stopped by its call."""
    with _own_gateway(stack, tmp_path_factory.mktemp("patient"), GATEWAY_PARSE_TIMEOUT_S="600") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def strict_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnGateway]:
    with _own_gateway(
        stack, tmp_path_factory.mktemp("strict"), GATEWAY_PARSE_TIMEOUT_S="3", GATEWAY_PARSE_MEMORY_MIB="192"
    ) as gateway:
        yield gateway


def _pdf(document_id: str, content: bytes) -> gateway_pb2.Document:
    return gateway_pb2.Document(
        id=document_id, file=gateway_pb2.File(content=content, content_type="application/pdf")
    )


def _ingest(namespace: str, *documents: gateway_pb2.Document) -> gateway_pb2.IngestDocumentsRequest:
    return gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=documents)


def test_a_slow_and_a_memory_hungry_pdf_fail_alone(strict_gateway: OwnGateway, namespace: str) -> None:
    response = strict_gateway.stub.IngestDocuments(
        _ingest(
            namespace,
            _pdf("slow.pdf", slow_pdf()),
            _pdf("hungry.pdf", memory_hungry_pdf()),
            _pdf("manual.pdf", make_pdf(PAGES)),
            gateway_pb2.Document(id="note", text="The foghorn is tested on Tuesdays."),
        ),
        timeout=120,
    )
    results = {result.document_id: result for result in response.results}

    assert results["slow.pdf"].status == retriever_pb2.UPSERT_STATUS_FAILED
    assert results["slow.pdf"].error == "parsing took longer than 3 s (GATEWAY_PARSE_TIMEOUT_S)"
    assert results["hungry.pdf"].status == retriever_pb2.UPSERT_STATUS_FAILED
    assert results["hungry.pdf"].error == "parsing needed more than 192 MiB (GATEWAY_PARSE_MEMORY_MIB)"
    assert results["manual.pdf"].status == retriever_pb2.UPSERT_STATUS_CREATED
    assert results["note"].status == retriever_pb2.UPSERT_STATUS_CREATED
    assert strict_gateway.workers() == []


def test_a_cancelled_ingest_stops_its_worker(patient_gateway: OwnGateway, namespace: str) -> None:
    call = patient_gateway.stub.IngestDocuments.future(_ingest(namespace, _pdf("slow.pdf", slow_pdf())))
    worker = patient_gateway.worker_of(call)

    call.cancel()
    worker.wait(timeout=GONE_WITHIN_S)

    assert call.cancelled()
    assert not psutil.pid_exists(worker.pid)


def test_an_ingest_past_its_deadline_stops_its_worker(patient_gateway: OwnGateway, namespace: str) -> None:
    call = patient_gateway.stub.IngestDocuments.future(
        _ingest(namespace, _pdf("slow.pdf", slow_pdf())), timeout=5
    )
    worker = patient_gateway.worker_of(call)

    with pytest.raises(grpc.RpcError) as ended:
        call.result()
    worker.wait(timeout=GONE_WITHIN_S)

    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not psutil.pid_exists(worker.pid)
