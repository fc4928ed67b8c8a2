"""The query side: Search, Ask and AskStream, and how their answers are put together.

Search: embed the query (unless keyword-only), then retrieve. Ask: look the
question up in the answer cache, else embed it, look its embedding up in the
semantic cache when that is on, else search with that embedding and generate.
AskStream: the same, the answer sent as it is written: the sources first, then
the answer's deltas, then the final answer with its citations.

Every downstream call gets the time left of the caller's deadline; every
retriever call carries the call's tenant, which the channel signs into the
call's token (services/common/tenant.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from gateway import error_details, instruments
from gateway.answer_cache import AnswerCache, cache_key, settings_key
from gateway.concurrency import Deadline
from gateway.upstream import Upstreams, calling
from rag.common.v1 import common_pb2
from rag.embedder.v1 import embedder_pb2
from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2
from rag.retriever.v1 import retriever_pb2
from services.common.errors import Unavailable
from services.common.tenant import Tenant
from services.common.timing import StageTimer

# The retriever's name for its rerank stage (services/retriever/servicer.py).
RERANK_STAGE = "rerank"


class QueryPipeline:
    def __init__(self, upstreams: Upstreams, answers: AnswerCache) -> None:
        self._up = upstreams
        self._answers = answers

    async def search(
        self,
        tenant: Tenant,
        query: str,
        top_k: int,
        options: gateway_pb2.RetrievalOptions,
        timer: StageTimer,
        deadline: Deadline,
        origins: error_details.QueryOrigins = error_details.SEARCH,
        at_least_version: int | None = None,
    ) -> retriever_pb2.SearchResponse:
        """The query's hits. `origins`: where the gateway request being served holds what this sends
        on (Search's by default), so that a field an inner service refuses is named as the caller's.
        `at_least_version`: an index version the search must see besides the caller's own token."""
        embedding = await self.embed(query, options, timer, deadline, origins)
        return await self.search_embedded(
            tenant, query, embedding, top_k, options, timer, deadline, origins, at_least_version
        )

    async def embed(
        self,
        query: str,
        options: gateway_pb2.RetrievalOptions,
        timer: StageTimer,
        deadline: Deadline,
        origins: error_details.QueryOrigins,
    ) -> list[float]:
        """The query's embedding; empty for a keyword-only search, which needs none."""
        if options.mode == common_pb2.SEARCH_MODE_KEYWORD:
            return []
        with timer.stage("embed"), calling("embedder", origins.embed):
            embedded = await self._up.embedder.Embed(
                # A question longer than the model reads is cut, not refused:
                # its beginning still finds the right chunks.
                embedder_pb2.EmbedRequest(
                    texts=[query], input_type=embedder_pb2.INPUT_TYPE_QUERY, truncate=True
                ),
                timeout=deadline.remaining(),
            )
        return list(embedded.embeddings[0].values)

    async def search_embedded(
        self,
        tenant: Tenant,
        query: str,
        embedding: list[float],
        top_k: int,
        options: gateway_pb2.RetrievalOptions,
        timer: StageTimer,
        deadline: Deadline,
        origins: error_details.QueryOrigins,
        at_least_version: int | None,
    ) -> retriever_pb2.SearchResponse:
        """The hits of a query already embedded (`embed`)."""
        request = retriever_pb2.SearchRequest(
            namespace=tenant.namespace,
            query_embedding=embedding,
            query_text=query,
            top_k=top_k,
            mode=options.mode,
            filter=options.filter if options.HasField("filter") else None,
            fusion=options.fusion if options.HasField("fusion") else None,
            rerank=options.rerank if options.HasField("rerank") else None,
            ef_search=options.ef_search if options.HasField("ef_search") else None,
            min_index_version=_at_least(
                options.min_index_version if options.HasField("min_index_version") else None, at_least_version
            ),
        )
        with timer.stage("retrieve"), calling("retriever", origins.search):
            response: retriever_pb2.SearchResponse = await self._up.retriever.Search(
                request, timeout=deadline.remaining(), metadata=tenant.metadata()
            )
        # The one part of "retrieve" a caller chooses to pay for, shown on its own
        # (it is also inside "retrieve").
        for timing in response.timings:
            if timing.stage == RERANK_STAGE:
                timer.record(RERANK_STAGE, timing.duration_ms)
        return response

    async def index_version(self, tenant: Tenant, deadline: Deadline) -> int:
        """The namespace's index version now, read on the primary the writes go to."""
        with calling("retriever"):
            response = await self._up.retriever.GetIndexVersion(
                retriever_pb2.GetIndexVersionRequest(namespace=tenant.namespace),
                timeout=deadline.remaining(),
                metadata=tenant.metadata(),
            )
        return int(response.version)

    async def ask(
        self,
        request: gateway_pb2.AskRequest,
        tenant: Tenant,
        top_k: int,
        timer: StageTimer,
        deadline: Deadline,
    ) -> gateway_pb2.AskResponse:
        origins = error_details.ASK
        lookup = await self._look_up(request, tenant, timer, deadline, origins)
        if lookup.answer is not None:
            return lookup.answer
        retrieved = await self._search_for(request, lookup, tenant, top_k, timer, deadline, origins)
        with timer.stage("generate"), calling("generator", origins.generate):
            generated: generator_pb2.GenerateResponse = await self._up.generator.Generate(
                generate_request(request, retrieved.hits), timeout=deadline.remaining()
            )
        response = answer_response(generated, retrieved.hits, timer)
        self._remember(request, lookup, retrieved.index_version, response)
        return response

    async def ask_stream(
        self,
        request: gateway_pb2.AskRequest,
        tenant: Tenant,
        top_k: int,
        timer: StageTimer,
        deadline: Deadline,
    ) -> AsyncIterator[gateway_pb2.AskStreamResponse]:
        origins = error_details.ASK_STREAM
        lookup = await self._look_up(request, tenant, timer, deadline, origins)
        if lookup.answer is not None:
            for replay in replayed(lookup.answer):
                yield replay
            return
        retrieved = await self._search_for(request, lookup, tenant, top_k, timer, deadline, origins)
        yield gateway_pb2.AskStreamResponse(
            sources=gateway_pb2.SourcesEvent(sources=numbered_sources(retrieved.hits, cited=set()))
        )
        started = time.perf_counter()
        first_token_at: float | None = None
        final: generator_pb2.GenerateResponse | None = None
        with timer.stage("generate"), calling("generator", origins.generate):
            stream = self._up.generator.GenerateStream(
                generator_pb2.GenerateStreamRequest(request=generate_request(request, retrieved.hits)),
                timeout=deadline.remaining(),
            )
            try:
                async for event in stream:
                    if event.HasField("delta"):
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                        yield gateway_pb2.AskStreamResponse(delta=event.delta)
                    elif event.HasField("final"):
                        final = event.final
            finally:
                # The caller went away (or we failed): stop the generator too,
                # so an LLM does not go on writing an answer nobody reads.
                stream.cancel()
        if final is None:
            raise Unavailable("generator: the answer stream ended without its final event")
        if first_token_at is not None:
            timer.record("time_to_first_token", (first_token_at - started) * 1000)
        response = answer_response(final, retrieved.hits, timer)
        self._remember(request, lookup, retrieved.index_version, response)
        yield gateway_pb2.AskStreamResponse(final=response)

    async def _look_up(
        self,
        request: gateway_pb2.AskRequest,
        tenant: Tenant,
        timer: StageTimer,
        deadline: Deadline,
        origins: error_details.QueryOrigins,
    ) -> _Lookup:
        """The cached answer; or, for a fresh one, where to cache it and the question's embedding.

        The exact key is looked up first. On a miss the question is embedded, as
        its search needs, and with the semantic cache on that embedding is looked
        up among the questions asked with the same settings key before the search
        runs with it.
        """
        slot, answer = await self._exact_answer(request, tenant, timer, deadline, origins)
        kind: instruments.CacheHitKind | None = None if answer is None else "exact"
        embedding: list[float] = []
        if answer is None:
            embedding = await self.embed(request.question, request.retrieval, timer, deadline, origins)
        if answer is None and slot is not None and self._answers.semantic and embedding:
            with timer.stage("semantic_cache") as span:
                similar = self._answers.get_similar(slot.settings, request.question, embedding)
                span.set_attribute("rag.gateway.cache_hit", similar is not None)
                if similar is not None:
                    answer, kind = similar.response, "semantic"
                    span.set_attribute("rag.gateway.cache_hit_kind", kind)
                    span.set_attribute("rag.gateway.cache_similarity", similar.similarity)
        if slot is not None:
            instruments.record_answer_cache(kind)
        if answer is not None:
            answer.cached = True
            answer.timings.extend(timer.to_proto())
        return _Lookup(slot, answer, embedding)

    async def _exact_answer(
        self,
        request: gateway_pb2.AskRequest,
        tenant: Tenant,
        timer: StageTimer,
        deadline: Deadline,
        origins: error_details.QueryOrigins,
    ) -> tuple[_CacheSlot | None, gateway_pb2.AskResponse | None]:
        """Where this question's answer is cached (None when not cached) and the cached answer, if any.

        The key includes the namespace's index version, read from the primary
        database the ingests write: after any change to the namespace no older
        answer matches.
        """
        if not self._answers.enabled or request.skip_cache:
            return None, None
        with timer.stage("cache") as span, calling("retriever", origins.index_version):
            version = await self._up.retriever.GetIndexVersion(
                retriever_pb2.GetIndexVersionRequest(namespace=tenant.namespace),
                timeout=deadline.remaining(),
                metadata=tenant.metadata(),
            )
            slot = _CacheSlot(
                cache_key(request, version.version), settings_key(request, version.version), version.version
            )
            cached = self._answers.get(slot.key)
            span.set_attribute("rag.gateway.index_version", version.version)
            span.set_attribute("rag.gateway.cache_hit", cached is not None)
            if cached is not None:
                span.set_attribute("rag.gateway.cache_hit_kind", "exact")
        return slot, cached

    async def _search_for(
        self,
        request: gateway_pb2.AskRequest,
        lookup: _Lookup,
        tenant: Tenant,
        top_k: int,
        timer: StageTimer,
        deadline: Deadline,
        origins: error_details.QueryOrigins,
    ) -> retriever_pb2.SearchResponse:
        """The question's hits, with the embedding the lookup made, at least at the version it read."""
        return await self.search_embedded(
            tenant,
            request.question,
            lookup.embedding,
            top_k,
            request.retrieval,
            timer,
            deadline,
            origins,
            _version_of(lookup.slot),
        )

    def _remember(
        self,
        request: gateway_pb2.AskRequest,
        lookup: _Lookup,
        searched_at: int,
        response: gateway_pb2.AskResponse,
    ) -> None:
        """Cache the answer under the version its search read, or not at all.

        The search was asked to read at least the slot's version, so with read
        replicas it may have read a newer one (a write committed between the
        version check and the search); an answer is kept only under the
        version of the data it came from, so no answer is ever served for a
        version it was not computed at.
        """
        slot = lookup.slot
        if slot is not None and searched_at == slot.version:
            self._answers.put(slot.key, response)
            self._answers.put_similar(slot.settings, request.question, lookup.embedding, slot.key)


@dataclass(frozen=True, slots=True)
class _CacheSlot:
    key: bytes
    # The key without the question: what a similar question's answer must share.
    settings: bytes
    version: int


@dataclass(frozen=True, slots=True)
class _Lookup:
    """What the answer cache gave: the answer, or where to cache a fresh one and the embedding for it."""

    slot: _CacheSlot | None
    answer: gateway_pb2.AskResponse | None
    # Empty for a keyword-only search, and when the answer came from the exact key.
    embedding: list[float]


def _version_of(slot: _CacheSlot | None) -> int | None:
    return None if slot is None else slot.version


def _at_least(*versions: int | None) -> int | None:
    """The highest of the versions given, or None when none is."""
    given = [v for v in versions if v is not None]
    return max(given) if given else None


def replayed(cached: gateway_pb2.AskResponse) -> list[gateway_pb2.AskStreamResponse]:
    """A cached answer as the same three events as a fresh one; the text as one delta."""
    sources = [gateway_pb2.Source(number=s.number, hit=s.hit) for s in cached.sources]
    return [
        gateway_pb2.AskStreamResponse(sources=gateway_pb2.SourcesEvent(sources=sources)),
        gateway_pb2.AskStreamResponse(delta=generator_pb2.AnswerDelta(text=cached.answer)),
        gateway_pb2.AskStreamResponse(final=cached),
    ]


def generate_request(
    request: gateway_pb2.AskRequest, hits: Sequence[retriever_pb2.SearchHit]
) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(
        question=request.question,
        context=[
            generator_pb2.ContextChunk(
                document_id=hit.document_id,
                chunk_index=hit.chunk_index,
                title=hit.title,
                text=hit.text,
                score=hit.score,
                metadata=hit.metadata,
            )
            for hit in hits
        ],
        history=request.history,
        options=request.generation,
    )


def numbered_sources(hits: Sequence[retriever_pb2.SearchHit], cited: set[int]) -> list[gateway_pb2.Source]:
    """Source n is hit n-1: the generator numbers its context the same way."""
    return [
        gateway_pb2.Source(number=index + 1, hit=hit, cited=index + 1 in cited)
        for index, hit in enumerate(hits)
    ]


def answer_response(
    generated: generator_pb2.GenerateResponse, hits: Sequence[retriever_pb2.SearchHit], timer: StageTimer
) -> gateway_pb2.AskResponse:
    cited = {citation.source_number for citation in generated.citations}
    return gateway_pb2.AskResponse(
        answer=generated.answer,
        outcome=generated.outcome,
        sources=numbered_sources(hits, cited),
        citations=generated.citations,
        usage=generated.usage,
        timings=timer.to_proto(),
    )
