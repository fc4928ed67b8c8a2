from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.errors import InvalidArgument
from services.common.registry import RETRIEVER
from services.common.settings import ServerSettings
from services.retriever.hybrid import require_a_weighted_leg
from services.retriever.limits import (
    DEFAULT_BM25_B,
    DEFAULT_BM25_K1,
    DEFAULT_CANDIDATE_DEPTH,
    DEFAULT_EF_SEARCH,
    DEFAULT_LEG_WEIGHT,
    DEFAULT_MAX_REPLICA_LAG_MS,
    DEFAULT_POOL_ACQUIRE_TIMEOUT_S,
    DEFAULT_POOL_MAX_SIZE,
    DEFAULT_POOL_MIN_SIZE,
    DEFAULT_RERANK_BUDGET_MS,
    DEFAULT_RERANK_CANDIDATES,
    DEFAULT_RERANK_FUSION,
    DEFAULT_RERANK_FUSION_K,
    DEFAULT_RERANK_FUSION_WEIGHT,
    DEFAULT_RRF_K,
    DEFAULT_STATEMENT_TIMEOUT_MS,
    MAX_BM25_B,
    MAX_BM25_K1,
    MAX_CANDIDATE_DEPTH,
    MAX_EF_SEARCH,
    MAX_LEG_WEIGHT,
    MAX_REPLICA_LAG_MS,
    MAX_RERANK_BUDGET_MS,
    MAX_RERANK_CANDIDATES,
    MAX_RRF_K,
    MAX_STATEMENT_TIMEOUT_MS,
    RerankFusionMode,
)
from services.retriever.rerank_folder import DEFAULT_ONNX_FILE, require_relative_onnx_file
from services.retriever.rerank_loading import DEFAULT_RERANK_BACKEND, RerankBackend
from services.retriever.rerank_stage import RerankFusion
from services.retriever.schema import (
    DEFAULT_HNSW_EF_CONSTRUCTION,
    DEFAULT_HNSW_M,
    DEFAULT_TEXT_SEARCH_CONFIG,
    MAX_HNSW_EF_CONSTRUCTION,
    MAX_HNSW_M,
    MAX_INDEXED_DIMENSION,
    MIN_HNSW_EF_CONSTRUCTION,
    MIN_HNSW_M,
)


class RetrieverSettings(ServerSettings):
    model_config = SettingsConfigDict(env_prefix=RETRIEVER.env_prefix)

    port: int = Field(RETRIEVER.port, ge=0, le=65535)
    # PostgreSQL 16+ prepared by `python -m services.retriever.database_setup`
    # (the vector extension, the role rag_retriever and its schema), connected
    # to as rag_retriever; `rag up` starts an embedded one and sets it.
    database_url: SecretStr = Field(validation_alias=AliasChoices("RETRIEVER_DATABASE_URL", "DATABASE_URL"))
    # Streaming replicas of that database, comma-separated (a comma inside a
    # URL written %2C): searches and listings go to one in rotation, writes
    # and the reads that decide them to the primary (store/replicas.py). A
    # replica lagging the primary by more than max_replica_lag_ms is left out
    # until it catches up.
    read_database_urls: SecretStr = SecretStr("")
    max_replica_lag_ms: int = Field(DEFAULT_MAX_REPLICA_LAG_MS, ge=0, le=MAX_REPLICA_LAG_MS)
    # Must match the embedder's model; checked against the stored schema at start-up.
    embedding_dimension: int = Field(384, ge=1, le=MAX_INDEXED_DIMENSION)
    hnsw_m: int = Field(DEFAULT_HNSW_M, ge=MIN_HNSW_M, le=MAX_HNSW_M)
    hnsw_ef_construction: int = Field(
        DEFAULT_HNSW_EF_CONSTRUCTION, ge=MIN_HNSW_EF_CONSTRUCTION, le=MAX_HNSW_EF_CONSTRUCTION
    )
    # hnsw.ef_search when a request sets none.
    default_ef_search: int = Field(DEFAULT_EF_SEARCH, ge=1, le=MAX_EF_SEARCH)
    pool_min_size: int = Field(DEFAULT_POOL_MIN_SIZE, ge=0)
    pool_max_size: int = Field(DEFAULT_POOL_MAX_SIZE, ge=1)
    # Waiting longer for a free pooled connection fails the call with UNAVAILABLE.
    pool_acquire_timeout_s: float = Field(DEFAULT_POOL_ACQUIRE_TIMEOUT_S, gt=0)
    # statement_timeout of every pooled connection; a statement running longer
    # fails its call with DEADLINE_EXCEEDED (see services/retriever/limits.py).
    statement_timeout_ms: int = Field(DEFAULT_STATEMENT_TIMEOUT_MS, ge=1, le=MAX_STATEMENT_TIMEOUT_MS)
    # The keyword leg's language: a PostgreSQL text search configuration (see
    # pg_ts_config), checked against the database and the stored keyword index
    # at start-up. Changing it means re-creating the tables and re-ingesting.
    text_search_config: str = Field(
        DEFAULT_TEXT_SEARCH_CONFIG, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
    )
    # BM25 term-frequency saturation and length normalisation.
    bm25_k1: float = Field(DEFAULT_BM25_K1, ge=0, le=MAX_BM25_K1)
    bm25_b: float = Field(DEFAULT_BM25_B, ge=0, le=MAX_BM25_B)
    # Reciprocal rank fusion when a hybrid request sets none (see services/retriever/limits.py).
    default_rrf_k: float = Field(DEFAULT_RRF_K, gt=0, le=MAX_RRF_K)
    default_dense_weight: float = Field(DEFAULT_LEG_WEIGHT, ge=0, le=MAX_LEG_WEIGHT)
    default_keyword_weight: float = Field(DEFAULT_LEG_WEIGHT, ge=0, le=MAX_LEG_WEIGHT)
    default_candidate_depth: int = Field(DEFAULT_CANDIDATE_DEPTH, ge=1, le=MAX_CANDIDATE_DEPTH)

    # Cross-encoder for the rerank stage: a model folder (`rag reranker train`
    # writes them; services/retriever/rerank_folder.py), or with the torch
    # backend also a Hugging Face name. Unset: no rerank stage.
    rerank_model: str | None = None
    # onnx: ONNX Runtime runs the folder's rerank_onnx_file (relative to the
    # folder; onnx/model_int8.onnx is the quantized one). torch: the
    # sentence-transformers CrossEncoder, on rerank_device.
    rerank_backend: RerankBackend = DEFAULT_RERANK_BACKEND
    rerank_onnx_file: str = DEFAULT_ONNX_FILE
    rerank_device: str = "cpu"
    # Threads inside one ONNX forward pass; 0 lets the engine use every core.
    rerank_intra_op_threads: int = Field(0, ge=0, le=256)
    # Tokens per (query, passage) pair; unset: what the model folder was exported at
    # (its reranker.json), else DEFAULT_RERANK_MAX_LENGTH.
    rerank_max_length: int | None = Field(None, ge=16, le=8192)
    # Fused candidates the cross-encoder reorders into the final top_k, and the
    # time after which the fused order is returned instead (flagged).
    rerank_candidates: int = Field(DEFAULT_RERANK_CANDIDATES, ge=1, le=MAX_RERANK_CANDIDATES)
    rerank_budget_ms: int = Field(DEFAULT_RERANK_BUDGET_MS, ge=1, le=MAX_RERANK_BUDGET_MS)
    # How the cross-encoder's scores make the final order (services/retriever/rerank_stage.py):
    # replace, or rrf of the fused and the cross-encoder's ranks with this weight and k.
    rerank_fusion: RerankFusionMode = DEFAULT_RERANK_FUSION
    rerank_fusion_weight: float = Field(DEFAULT_RERANK_FUSION_WEIGHT, ge=0, le=MAX_LEG_WEIGHT)
    rerank_fusion_k: float = Field(DEFAULT_RERANK_FUSION_K, gt=0, le=MAX_RRF_K)

    @property
    def read_dsns(self) -> list[str]:
        return [url.strip() for url in self.read_database_urls.get_secret_value().split(",") if url.strip()]

    @property
    def rerank_fusion_settings(self) -> RerankFusion:
        return RerankFusion(self.rerank_fusion, self.rerank_fusion_weight, self.rerank_fusion_k)

    @field_validator("rerank_onnx_file")
    @classmethod
    def _onnx_file_inside_the_folder(cls, value: str) -> str:
        return require_relative_onnx_file(value)

    @model_validator(mode="after")
    def _a_leg_must_count(self) -> RetrieverSettings:
        try:
            require_a_weighted_leg(self.default_dense_weight, self.default_keyword_weight, "default_")
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        return self
