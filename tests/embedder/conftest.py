"""The embedding model in-process, and embedder processes of a test's own with chosen settings."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from sentence_transformers import SentenceTransformer

from rag.embedder.v1 import embedder_pb2_grpc
from rag_cli.stack import Stack, free_port
from services.common.registry import EMBEDDER
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel
from tests.internal_calls import signed_channel

StartEmbedder = Callable[..., embedder_pb2_grpc.EmbedderServiceStub]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def model(onnx_cache: Path) -> EmbeddingModel:
    """The default engine (ONNX Runtime) on the real all-MiniLM-L6-v2 weights."""
    return EmbeddingModel.load(EmbedderSettings(onnx_cache_dir=onnx_cache))


@pytest.fixture(scope="session")
def transformer(model: EmbeddingModel) -> SentenceTransformer:
    """The same weights run by torch through sentence-transformers: the reference."""
    return SentenceTransformer(model.name, device="cpu")


@pytest.fixture
def start_embedder(tmp_path: Path, onnx_cache: Path) -> Iterator[StartEmbedder]:
    """Starts `python -m services.embedder` with EMBEDDER_* settings given as keywords; returns a stub.

    The stub signs its calls with the key the processes are given, as the gateway does.
    """
    ports: dict[str, int] = {}
    processes = Stack(data_dir=tmp_path, ports=ports, grace_period_s=1.0)
    processes.log_path("any").parent.mkdir(parents=True)
    channels: list[grpc.Channel] = []

    def start(**settings: str) -> embedder_pb2_grpc.EmbedderServiceStub:
        name = f"embedder-{len(ports)}"
        ports[name] = free_port()
        environment = {
            **os.environ,
            **processes.internal_auth_environment(),
            "HF_HUB_OFFLINE": "1",
            "EMBEDDER_PORT": str(ports[name]),
            "EMBEDDER_GRACE_PERIOD_S": "1",
            "EMBEDDER_ONNX_CACHE_DIR": str(onnx_cache),
            **{f"EMBEDDER_{key.upper()}": value for key, value in settings.items()},
        }
        processes.start_service(name, "services.embedder", environment)
        processes.wait_until_serving(name, deadline=time.monotonic() + 180)
        channels.append(signed_channel(processes, EMBEDDER, target=processes.target(name)))
        return embedder_pb2_grpc.EmbedderServiceStub(channels[-1])

    yield start
    for channel in channels:
        channel.close()
    for name in list(ports):
        processes.stop_service(name)
