"""ChunkStore opened as the retriever service opens it with its default settings."""

from __future__ import annotations

from collections.abc import Mapping

from benchkit import defaults
from services.retriever.hybrid import Fusion
from services.retriever.keyword import Bm25
from services.retriever.store import ChunkStore

# The retriever's default fusion and BM25, from its settings.
DEFAULT_FUSION = Fusion(
    defaults.RRF_K, defaults.DENSE_WEIGHT, defaults.KEYWORD_WEIGHT, defaults.CANDIDATE_DEPTH
)
DEFAULT_BM25 = Bm25(defaults.BM25_K1, defaults.BM25_B)


async def connect_store(
    dsn: str,
    *,
    max_pool_size: int,
    bm25: Bm25 | None = None,
    server_settings: Mapping[str, str] | None = None,
) -> ChunkStore:
    """The retriever's defaults but the pool size, and `bm25` or session settings where given."""
    return await ChunkStore.connect(
        dsn,
        dimension=defaults.EMBEDDING_DIMENSION,
        hnsw_m=defaults.HNSW_M,
        hnsw_ef_construction=defaults.HNSW_EF_CONSTRUCTION,
        default_ef_search=defaults.DEFAULT_EF_SEARCH,
        bm25=bm25 or DEFAULT_BM25,
        default_fusion=DEFAULT_FUSION,
        max_pool_size=max_pool_size,
        server_settings=server_settings,
    )
