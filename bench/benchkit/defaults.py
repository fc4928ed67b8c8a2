"""The services' defaults the benchmarks measure, read from their own settings so they cannot drift."""

from __future__ import annotations

from services.embedder.config import EmbedderSettings
from services.retriever.config import RetrieverSettings

_RETRIEVER = RetrieverSettings.model_fields
EMBEDDING_DIMENSION: int = _RETRIEVER["embedding_dimension"].default
HNSW_M: int = _RETRIEVER["hnsw_m"].default
HNSW_EF_CONSTRUCTION: int = _RETRIEVER["hnsw_ef_construction"].default
DEFAULT_EF_SEARCH: int = _RETRIEVER["default_ef_search"].default
BM25_K1: float = _RETRIEVER["bm25_k1"].default
BM25_B: float = _RETRIEVER["bm25_b"].default
RRF_K: float = _RETRIEVER["default_rrf_k"].default
DENSE_WEIGHT: float = _RETRIEVER["default_dense_weight"].default
KEYWORD_WEIGHT: float = _RETRIEVER["default_keyword_weight"].default
CANDIDATE_DEPTH: int = _RETRIEVER["default_candidate_depth"].default

# The gateway leaves chunking to the embedder's defaults.
_EMBEDDER = EmbedderSettings.model_fields
CHUNK_TOKENS: int = _EMBEDDER["default_chunk_tokens"].default
CHUNK_OVERLAP: int = _EMBEDDER["default_chunk_overlap"].default
