"""The retriever process with a reranker folder: served and named when good, NOT_SERVING when broken.

Real `python -m services.retriever` processes against the embedded PostgreSQL:
a good folder is served by ONNX Runtime and announced in the log and the
metrics; a broken one leaves the process up (no crash loop), NOT_SERVING, with
the reason in its log and in the searches it is sent.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from rag.common.v1 import common_pb2
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from rag_cli.stack import Stack, free_port
from services.common.registry import RETRIEVER
from services.common.server import LIVENESS
from services.retriever.rerank_folder import DEFAULT_ONNX_FILE, sha256_of
from tests.internal_calls import signed_channel
from tests.retriever.tiny_cross_encoder import build_tiny_reranker_folder

MAX_LENGTH = 64
DIMENSION = 8
SERVICE_NAME = retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"].full_name
START_TIMEOUT_S = 90.0
# What services.common.server logs once the service reports SERVING.
SERVING_LINE = re.compile(r"services\.common\.server trace_id=\S+ serving$", re.MULTILINE)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reranker_folder(tmp_path_factory.mktemp("reranker"), max_length=MAX_LENGTH)


@pytest.fixture
async def database(make_database: Callable[[], Awaitable[str]]) -> str:
    return await make_database()


@dataclass
class Retriever:
    process: subprocess.Popen[bytes]
    log: Path
    target: str
    keys: Stack

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, fragment: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while fragment not in self.log_text():
            assert self.process.poll() is None, f"the retriever exited:\n{self.log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {fragment!r} in the log:\n{self.log_text()[-3000:]}"
            time.sleep(0.2)

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.health() != health_pb2.HealthCheckResponse.SERVING:
            assert self.process.poll() is None, f"the retriever exited:\n{self.log_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never SERVING:\n{self.log_text()[-3000:]}"
            time.sleep(0.2)

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        return int(reply.status)

    def stub(self) -> Iterator[retriever_pb2_grpc.RetrieverServiceStub]:
        with signed_channel(self.keys, RETRIEVER, target=self.target) as channel:
            yield retriever_pb2_grpc.RetrieverServiceStub(channel)


@contextmanager
def retriever(tmp_path: Path, database: str, model: Path, **environment: str) -> Iterator[Retriever]:
    keys = Stack(data_dir=tmp_path / "keys")
    port = free_port()
    log = tmp_path / "retriever.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.retriever"],
            env={
                **os.environ,
                **keys.internal_auth_environment(),
                "HF_HUB_OFFLINE": "1",
                "RETRIEVER_PORT": str(port),
                "DATABASE_URL": database,
                "RETRIEVER_EMBEDDING_DIMENSION": str(DIMENSION),
                "RETRIEVER_RERANK_MODEL": str(model),
                "RETRIEVER_RERANK_MAX_LENGTH": str(MAX_LENGTH),
                **environment,
            },
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Retriever(process, log, f"127.0.0.1:{port}", keys)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=15)


def _stop(running: Retriever) -> int:
    running.process.send_signal(signal.SIGTERM)
    return running.process.wait(timeout=30)


def _search(stub: retriever_pb2_grpc.RetrieverServiceStub, **fields: object) -> retriever_pb2.SearchResponse:
    request = retriever_pb2.SearchRequest(
        namespace="docs",
        query_embedding=[0.1] * DIMENSION,
        query_text="whales and krill",
        top_k=2,
        mode=common_pb2.SEARCH_MODE_HYBRID,
        **fields,  # type: ignore[arg-type]
    )
    response: retriever_pb2.SearchResponse = stub.Search(request, timeout=30)
    return response


def _chunk(index: int, text: str) -> retriever_pb2.ChunkRecord:
    return retriever_pb2.ChunkRecord(
        index=index, text=text, embedding=[0.1 * (index + 1)] * DIMENSION, start_char=0, end_char=len(text)
    )


def test_a_good_folder_is_served_by_onnx_and_named_in_the_log_and_the_metrics(
    tmp_path: Path, database: str, folder: Path
) -> None:
    metrics_port = free_port()
    environment = {
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(metrics_port),
    }
    sha256 = sha256_of(folder / DEFAULT_ONNX_FILE)
    with retriever(tmp_path, database, folder, **environment) as running:
        running.wait_for_log("database ready")
        running.wait_serving()
        for stub in running.stub():
            stub.Upsert(
                retriever_pb2.UpsertRequest(
                    namespace="docs",
                    documents=[
                        retriever_pb2.DocumentRecord(
                            document_id="d1",
                            content_hash="h",
                            title="Krill",
                            chunks=[_chunk(0, "whales and krill"), _chunk(1, "the blue whale")],
                        )
                    ],
                ),
                timeout=30,
            )
            searched = _search(stub)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
            scraped = reply.read().decode()
        exit_code = _stop(running)
        log = running.log_text()

    assert searched.reranked
    assert all(hit.HasField("rerank_score") for hit in searched.hits)
    assert (
        f"loaded rerank model: model={folder} backend=onnx file={DEFAULT_ONNX_FILE} sha256={sha256} "
        f"max_length={MAX_LENGTH}"
    ) in log
    assert 'card.base_model="tiny random BERT"' in log
    assert SERVING_LINE.search(log)
    info = [
        sample
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "rag_retriever_reranker_info"
    ]
    assert len(info) == 1, scraped
    assert info[0].value == 1
    assert info[0].labels["model"] == str(folder)
    assert info[0].labels["backend"] == "onnx"
    assert info[0].labels["file"] == DEFAULT_ONNX_FILE
    assert info[0].labels["sha256"] == sha256
    assert exit_code == 0


def _garbage_onnx(folder: Path) -> None:
    (folder / DEFAULT_ONNX_FILE).write_bytes(b"\x00garbage, not a protobuf\xff" * 10)


def _no_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_garbage_onnx, "onnx/model.onnx is not a loadable ONNX model"),
        (_no_tokenizer, "has no tokenizer"),
    ],
)
def test_a_broken_folder_keeps_the_retriever_up_and_not_serving_saying_why(
    tmp_path: Path, database: str, folder: Path, damage: Callable[[Path], None], reason: str
) -> None:
    broken = Path(shutil.copytree(folder, tmp_path / "broken"))
    damage(broken)

    with retriever(tmp_path, database, broken) as running:
        running.wait_for_log("cannot be served")
        # Start-up goes on to the database, then stays where it is.
        running.wait_for_log("database ready")
        time.sleep(2)
        assert running.process.poll() is None, "the process stays up"
        overall, service, liveness = (running.health(name) for name in ("", SERVICE_NAME, LIVENESS))
        for stub in running.stub():
            with pytest.raises(grpc.RpcError) as raised:
                _search(stub)
            unreranked = _search(stub, rerank=common_pb2.RerankParams(enabled=False))
        exit_code = _stop(running)
        log = running.log_text()

    assert overall == health_pb2.HealthCheckResponse.NOT_SERVING
    assert service == health_pb2.HealthCheckResponse.NOT_SERVING
    assert liveness == health_pb2.HealthCheckResponse.SERVING, "nothing should restart it"
    error = raised.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "rerank model failed to load" in (error.details() or "")
    assert reason in (error.details() or "")
    assert not unreranked.reranked
    assert f"the rerank model {broken} cannot be served" in log
    assert reason in log
    assert log.count("cannot be served") == 1, "one clear error, not a retry loop"
    assert not re.search(r"services\.common\.server trace_id=\S+ serving$", log, re.MULTILINE), (
        "never SERVING"
    )
    assert exit_code == 0, "SIGTERM still stops it cleanly"
