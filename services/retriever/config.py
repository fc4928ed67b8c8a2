from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServerSettings


class RetrieverSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVER_")

    port: int = Field(50052, ge=0, le=65535)
    # Any PostgreSQL with pgvector; `rag up` starts an embedded one and sets it.
    database_url: SecretStr = Field(validation_alias=AliasChoices("RETRIEVER_DATABASE_URL", "DATABASE_URL"))
    # Must match the embedder's model; checked against the stored schema at start-up.
    embedding_dimension: int = Field(384, ge=1, le=16000)
    hnsw_m: int = Field(16, ge=2, le=100)
    hnsw_ef_construction: int = Field(64, ge=4, le=1000)
    # hnsw.ef_search when a request sets none.
    default_ef_search: int = Field(100, ge=1, le=1000)
    pool_min_size: int = Field(1, ge=0)
    pool_max_size: int = Field(10, ge=1)
