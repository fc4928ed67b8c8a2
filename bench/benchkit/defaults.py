"""The services' defaults the benchmarks measure, read from their own settings so they cannot drift."""

from __future__ import annotations

from gateway.config import GatewaySettings
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
POOL_MAX_SIZE: int = _RETRIEVER["pool_max_size"].default

# The gateway leaves chunking to the embedder's defaults.
_EMBEDDER = EmbedderSettings.model_fields
CHUNK_TOKENS: int = _EMBEDDER["default_chunk_tokens"].default
CHUNK_OVERLAP: int = _EMBEDDER["default_chunk_overlap"].default
# The longest text the embedder embeds in one piece (a chunk of an ingest is one).
EMBEDDER_MAX_TEXT_CHARS: int = _EMBEDDER["max_text_chars"].default

# The gateway's bounds on calls and its caps on what one request may hold.
_GATEWAY = GatewaySettings.model_fields
GATEWAY_MAX_IN_FLIGHT: int = _GATEWAY["max_in_flight"].default
GATEWAY_MAX_MESSAGE_BYTES: int = _GATEWAY["max_message_bytes"].default
GATEWAY_MAX_DOCUMENTS: int = _GATEWAY["max_documents_per_request"].default
GATEWAY_MAX_DOCUMENT_BYTES: int = _GATEWAY["max_document_bytes"].default
GATEWAY_MAX_METADATA_BYTES: int = _GATEWAY["max_metadata_bytes"].default
GATEWAY_MAX_HTML_BYTES: int = _GATEWAY["max_html_bytes"].default
GATEWAY_MAX_QUESTION_CHARS: int = _GATEWAY["max_question_chars"].default
