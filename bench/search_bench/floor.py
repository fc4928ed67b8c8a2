"""The floor: the fastest search this process can make with the service's model, database and SQL.

No gRPC, no tracing, no validation, no transaction: the query is embedded by
the model the embedder loads (ONNX), concurrent queries sharing model batches
through the embedder's own DynamicBatcher, and the retriever's statements run
on a pool of connections with the retriever's session settings: a dense search
is its one statement, a hybrid search its two legs at once on two connections
(as the retriever runs them when it has a spare one) and the hits' fields.
Nothing here can be dropped without changing the hits.

Beside it, `StoreSearch`: the retriever's own ChunkStore.search_at in this
process (its transaction, index version and settings per search, its stage
timer), the floor plus what the store adds.
"""

from __future__ import annotations

import asyncio

import asyncpg

from benchkit import defaults
from benchkit.store import DEFAULT_BM25, DEFAULT_FUSION, connect_store
from services.embedder.batcher import BatchLimits, DynamicBatcher
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel, InputKind
from services.retriever.hybrid import (
    HITS_SQL,
    SearchMode,
    SearchQuery,
    dense_hits_sql,
    dense_leg_sql,
    dense_ranking,
    dense_search_settings,
    fuse,
)
from services.retriever.keyword_search import search_keyword
from services.retriever.schema import DEFAULT_TEXT_SEARCH_CONFIG
from services.retriever.store import ChunkStore
from services.retriever.store.connection import create_pool, session_settings

# Two connections a client (at most 32): a hybrid search's two legs at once, never waiting for one.
FLOOR_POOL_SIZE = 64

# A hit as every path reports it: (document id, chunk index).
ChunkKey = tuple[str, int]


class QueryEmbedder:
    """Query vectors from the in-process model, concurrent queries batched as the embedder batches them."""

    def __init__(self, model: EmbeddingModel) -> None:
        settings = EmbedderSettings()
        self._model = model
        self._batcher = DynamicBatcher(
            model.encoder,
            model.dimension,
            BatchLimits(
                max_texts=settings.inference_batch_size,
                max_tokens=settings.max_batch_tokens,
                max_wait_s=settings.max_wait_ms / 1000,
                max_queued_texts=settings.max_queued_texts,
            ),
        )

    def start(self) -> None:
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()

    async def embed(self, query: str) -> list[float]:
        tokenized = self._model.tokenizer.tokenize(self._model.with_prefix([query], InputKind.QUERY))
        vectors = await self._batcher.embed(tokenized)
        return [float(x) for x in vectors[0]]


class Floor:
    def __init__(self, pool: asyncpg.Pool, embedder: QueryEmbedder) -> None:
        self._pool = pool
        self._embedder = embedder

    @classmethod
    async def open(cls, dsn: str, embedder: QueryEmbedder) -> Floor:
        settings = session_settings(dense_search_settings(defaults.DEFAULT_EF_SEARCH))
        pool = await create_pool(
            dsn, settings, min_size=2, max_size=FLOOR_POOL_SIZE, statement_timeout_ms=60_000
        )
        return cls(pool, embedder)

    async def close(self) -> None:
        await self._pool.close()

    async def search(self, namespace: str, query: str, mode: SearchMode, top_k: int) -> list[ChunkKey]:
        """The hits, best first; their fields are fetched as the retriever fetches them."""
        embedding = await self._embedder.embed(query)
        search = SearchQuery(
            namespace, mode, top_k, embedding, query, None, DEFAULT_FUSION, defaults.DEFAULT_EF_SEARCH
        )
        if mode is SearchMode.DENSE:
            sql, params = dense_hits_sql(search)
            rows = [row for row in await self._pool.fetch(sql, *params) if row["id"] is not None]
            ranked = fuse(search, dense_ranking([(row["id"], row["distance"]) for row in rows]), [])
        else:
            async with self._pool.acquire() as dense_conn, self._pool.acquire() as keyword_conn:
                dense, keyword = await asyncio.gather(
                    _dense(dense_conn, search), _keyword(keyword_conn, search)
                )
                ranked = fuse(search, dense, keyword)
                rows = await keyword_conn.fetch(HITS_SQL, namespace, [r.chunk_id for r in ranked])
        fields = {row["id"]: row for row in rows}
        return [(fields[r.chunk_id]["document_id"], fields[r.chunk_id]["chunk_index"]) for r in ranked]


async def _dense(conn: asyncpg.Connection, search: SearchQuery) -> list[tuple[int, float]]:
    sql, params = dense_leg_sql(search)
    return dense_ranking([(row["id"], row["distance"]) for row in await conn.fetch(sql, *params)])


async def _keyword(conn: asyncpg.Connection, search: SearchQuery) -> list[tuple[int, float]]:
    assert search.text is not None
    leg = await search_keyword(
        conn,
        search.namespace,
        search.text,
        search.depth,
        text_search_config=DEFAULT_TEXT_SEARCH_CONFIG,
        bm25=DEFAULT_BM25,
    )
    return list(zip(leg.chunk_ids, leg.scores, strict=True))


class StoreSearch:
    """The floor's embedding, then the retriever's ChunkStore.search_at in this process."""

    def __init__(self, store: ChunkStore, embedder: QueryEmbedder) -> None:
        self._store = store
        self._embedder = embedder

    @classmethod
    async def open(cls, dsn: str, embedder: QueryEmbedder) -> StoreSearch:
        # The retriever's own pool size.
        return cls(await connect_store(dsn, max_pool_size=defaults.POOL_MAX_SIZE), embedder)

    async def close(self) -> None:
        await self._store.close()

    async def search(self, namespace: str, query: str, mode: SearchMode, top_k: int) -> list[ChunkKey]:
        embedding = await self._embedder.embed(query)
        searched = await self._store.search_at(namespace, top_k, mode=mode, embedding=embedding, text=query)
        return [(hit.document_id, hit.chunk_index) for hit in searched.hits]
