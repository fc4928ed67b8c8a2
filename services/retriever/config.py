from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, model_validator
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
    # The keyword leg's language: a PostgreSQL text search configuration (see
    # pg_ts_config), checked against the database and the stored keyword index
    # at start-up. Changing it means re-creating the tables and re-ingesting.
    text_search_config: str = Field("english", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
    # BM25 term-frequency saturation and length normalisation.
    bm25_k1: float = Field(1.2, ge=0, le=10)
    bm25_b: float = Field(0.75, ge=0, le=1)
    # Reciprocal rank fusion when a hybrid request sets none (tuned on SciFact train, bench/keyword_leg.py).
    default_rrf_k: float = Field(10.0, gt=0, le=1_000_000)
    default_dense_weight: float = Field(1.0, ge=0, le=1_000_000)
    default_keyword_weight: float = Field(1.0, ge=0, le=1_000_000)
    default_candidate_depth: int = Field(100, ge=1, le=1000)

    # Cross-encoder for the rerank stage: a sentence-transformers CrossEncoder
    # name or local path. Unset: no rerank stage.
    rerank_model: str | None = None
    rerank_device: str = "cpu"
    rerank_max_length: int = Field(512, ge=16, le=8192)
    # Fused candidates the cross-encoder reorders into the final top_k, and the
    # time after which the fused order is returned instead (flagged).
    rerank_candidates: int = Field(50, ge=1, le=100)
    rerank_budget_ms: int = Field(1000, ge=1, le=60_000)

    @model_validator(mode="after")
    def _a_leg_must_count(self) -> RetrieverSettings:
        if self.default_dense_weight == 0 and self.default_keyword_weight == 0:
            raise ValueError("default_dense_weight and default_keyword_weight must not both be 0")
        return self
