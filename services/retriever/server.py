from __future__ import annotations

import asyncio
import logging

import asyncpg
import grpc
from opentelemetry.sdk.trace import TracerProvider

from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from services.common.deferred import Deferred
from services.common.errors import Unavailable
from services.common.internal_auth import InternalAuthInterceptor, TokenVerifier
from services.common.registry import RETRIEVER
from services.common.server import ServiceBinding, serve
from services.retriever import instruments
from services.retriever.config import RetrieverSettings
from services.retriever.hybrid import Fusion
from services.retriever.keyword import Bm25
from services.retriever.rerank import Reranker
from services.retriever.rerank_folder import RerankModelError
from services.retriever.rerank_loading import describe, load_reranker
from services.retriever.servicer import RerankSettings, RetrieverServicer
from services.retriever.store import ChunkStore

log = logging.getLogger(__name__)

# How often the keyword index's maintenance looks for work when it found none.
KEYWORD_MAINTENANCE_IDLE_S = 1.0

RETRY_FIRST_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 10.0
UNREACHABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    Unavailable,
)

SERVICE = retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"]


async def run(settings: RetrieverSettings, tracer_provider: TracerProvider) -> None:
    # First: without its key the retriever could not tell the gateway's calls, nor
    # their tenant, from anyone's; it does not start. Every RPC is checked for the
    # namespaces the gateway signed into the call.
    internal_auth = InternalAuthInterceptor(
        TokenVerifier(settings.internal_auth_key(), RETRIEVER.name), tenant_service=SERVICE
    )
    store: Deferred[ChunkStore] = Deferred("the database connection pool")
    reranker: Deferred[Reranker] = Deferred("the rerank model")
    rerank = (
        RerankSettings(
            reranker, settings.rerank_candidates, settings.rerank_budget_ms, settings.rerank_fusion_settings
        )
        if settings.rerank_model
        else None
    )
    servicer = RetrieverServicer(store, rerank)
    background: list[asyncio.Task[None]] = []

    def register(server: grpc.aio.Server) -> None:
        retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(servicer, server)

    async def start() -> None:
        rerank_model = settings.rerank_model
        rerank_ready = await _load_reranker(rerank_model, settings, reranker) if rerank_model else True
        store.resolve(await _connect_when_reachable(settings))
        log.info("database ready; schema migrated (dimension %d)", settings.embedding_dimension)
        background.append(asyncio.create_task(_maintain_keyword_index(store.value)))
        if store.value.replicas:
            background.append(asyncio.create_task(store.value.watch_replicas()))
            log.info("read replicas: %s", ", ".join(r.name for r in store.value.replicas))
        if not rerank_ready:
            # Never returning keeps health NOT_SERVING (serve() reports SERVING
            # when start() returns); SIGTERM still cancels this and stops cleanly.
            # The database is connected all the same: the keyword index is kept
            # up, and calls that need no reranker work for whoever still sends them.
            await asyncio.Event().wait()

    async def stop() -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if store.ready:
            await store.value.close()
        if reranker.ready:
            reranker.value.close()

    binding = ServiceBinding([SERVICE.full_name], register, start, stop, interceptors=[internal_auth])
    await serve(settings, binding, tracer_provider)


async def _load_reranker(model: str, settings: RetrieverSettings, reranker: Deferred[Reranker]) -> bool:
    """Loads the rerank `model` into `reranker`; False, the reason logged, when it cannot be served.

    A broken model folder (a missing or corrupt ONNX file, no tokenizer, more
    than one output label) does not end the process. Exiting non-zero would
    look more honest, but under Kubernetes or any supervisor it becomes a crash
    loop: every restart reloads the same files, fails the same way, and pushes
    the reason further back in the logs behind back-off delays. Staying up,
    NOT_SERVING, is what readiness is for: the pod never becomes ready, a
    rollout to it stalls while the old replicas keep serving, and the reason
    stays in one log line and in every search that reaches this replica. The
    liveness health service (services/common/server.py) keeps answering
    SERVING, so nothing restarts a process that a restart cannot fix.
    """
    try:
        loaded = await asyncio.to_thread(
            load_reranker,
            model,
            backend=settings.rerank_backend,
            onnx_file=settings.rerank_onnx_file,
            device=settings.rerank_device,
            max_length=settings.rerank_max_length,
            intra_op_threads=settings.rerank_intra_op_threads,
        )
    # Any failure: whatever broke, the same files will break it again on a retry.
    except Exception as error:
        diagnosed = isinstance(error, RerankModelError)
        log.error(
            "the rerank model %s cannot be served: %s; not serving until restarted with a working model "
            "(RETRIEVER_RERANK_MODEL, RETRIEVER_RERANK_BACKEND, RETRIEVER_RERANK_ONNX_FILE)",
            model,
            error if diagnosed else f"{type(error).__name__}: {error}",
            exc_info=not diagnosed,
        )
        reason = str(error) if diagnosed else "an unexpected error; the retriever's log has it"
        # UNAVAILABLE, as while a replica is still starting: this replica cannot
        # rerank, another may, and the gateway's channel retries UNAVAILABLE.
        reranker.fail(
            Unavailable(
                f"this retriever's rerank model failed to load ({reason}); "
                "search with rerank.enabled=false, or fix the model and restart the retriever"
            )
        )
        return False
    reranker.resolve(loaded)
    log.info("loaded rerank model: %s", describe(loaded.identity))
    instruments.record_reranker(loaded.identity)
    return True


async def _connect_when_reachable(settings: RetrieverSettings) -> ChunkStore:
    """Connects and migrates, retrying while the database cannot be reached.

    A database that is still starting (or briefly down) keeps the retriever
    NOT_SERVING rather than crashing it; a wrong schema still fails at once.
    """
    delay = RETRY_FIRST_DELAY_S
    while True:
        try:
            connected = await ChunkStore.connect(
                settings.database_url.get_secret_value(),
                dimension=settings.embedding_dimension,
                hnsw_m=settings.hnsw_m,
                hnsw_ef_construction=settings.hnsw_ef_construction,
                default_ef_search=settings.default_ef_search,
                text_search_config=settings.text_search_config,
                bm25=Bm25(settings.bm25_k1, settings.bm25_b),
                default_fusion=Fusion(
                    settings.default_rrf_k,
                    settings.default_dense_weight,
                    settings.default_keyword_weight,
                    settings.default_candidate_depth,
                ),
                min_pool_size=settings.pool_min_size,
                max_pool_size=settings.pool_max_size,
                pool_acquire_timeout_s=settings.pool_acquire_timeout_s,
                statement_timeout_ms=settings.statement_timeout_ms,
                read_dsns=settings.read_dsns,
                max_replica_lag_ms=settings.max_replica_lag_ms,
            )
            await connected.ping()
            return connected
        except UNREACHABLE as error:
            log.warning("database not reachable (%s); retrying in %.1fs", type(error).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)


async def _maintain_keyword_index(store: ChunkStore) -> None:
    """Compact fresh keyword blocks, and convert a database written before blocks, while the replica runs.

    Every replica runs this; namespace locks keep two from compacting one
    namespace at once. A failed round (the database restarting, say) is
    logged and retried: searches stay exact without compaction, only slower.
    """
    while True:
        try:
            done = await store.maintain_keyword_index()
        except Exception:
            log.exception("keyword index maintenance failed; retrying in %.0fs", KEYWORD_MAINTENANCE_IDLE_S)
            done = None
        if done is None or not done.worked:
            await asyncio.sleep(KEYWORD_MAINTENANCE_IDLE_S)
