"""The gateway's sequencing: which service is called, in what order, with what.

Ask: embed the question, retrieve, generate. Ingest: skip documents whose
content hash is stored, chunk the rest (a few documents at a time), embed all
their chunks in batches through one stream, and upsert each document as soon as
its chunks are embedded, while later batches are still in the model.
Every downstream call gets the time left of the caller's deadline.
Retriever calls carry the tenant the gateway authorized (gateway.auth.tenant_metadata).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

from google.protobuf import struct_pb2
from opentelemetry import trace

from gateway import instruments
from gateway.answer_cache import AnswerCache, cache_key
from gateway.auth import tenant_metadata
from gateway.embedding import embed_stream
from gateway.requests import IncomingDocument
from gateway.upstream import Upstreams, calling
from rag.common.v1 import common_pb2
from rag.embedder.v1 import embedder_pb2
from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2
from rag.retriever.v1 import retriever_pb2
from services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from services.common.timing import StageTimer
from services.common.validation import require_range

_tracer = trace.get_tracer(__name__)

# Chunk calls of one ingest in flight at once.
_CHUNK_CALLS_IN_FLIGHT = 4

T = TypeVar("T")


class Deadline:
    """The caller's deadline, shared out to each downstream call."""

    def __init__(self, seconds: float) -> None:
        self._expires = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self._expires - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the request deadline passed before the gateway finished")
        return left


class Pipeline:
    def __init__(
        self,
        upstreams: Upstreams,
        embed_batch_size: int,
        embed_stream_window: int = 4,
        answers: AnswerCache | None = None,
    ) -> None:
        self._up = upstreams
        self._embed_batch_size = embed_batch_size
        self._embed_stream_window = embed_stream_window
        self._answers = answers or AnswerCache(capacity=0, ttl_s=1)

    async def search(
        self,
        namespace: str,
        query: str,
        top_k: int,
        options: gateway_pb2.RetrievalOptions,
        timer: StageTimer,
        deadline: Deadline,
    ) -> retriever_pb2.SearchResponse:
        vector: list[float] = []
        if options.mode != common_pb2.SEARCH_MODE_KEYWORD:
            with timer.stage("embed"), calling("embedder"):
                embedded = await self._up.embedder.Embed(
                    # A question longer than the model reads is cut, not refused:
                    # its beginning still finds the right chunks.
                    embedder_pb2.EmbedRequest(
                        texts=[query], input_type=embedder_pb2.INPUT_TYPE_QUERY, truncate=True
                    ),
                    timeout=deadline.remaining(),
                )
            vector = list(embedded.embeddings[0].values)
        request = retriever_pb2.SearchRequest(
            namespace=namespace,
            query_embedding=vector,
            query_text=query,
            top_k=top_k,
            mode=options.mode,
            filter=options.filter if options.HasField("filter") else None,
            fusion=options.fusion if options.HasField("fusion") else None,
            rerank=options.rerank if options.HasField("rerank") else None,
            ef_search=options.ef_search if options.HasField("ef_search") else None,
        )
        with timer.stage("retrieve"), calling("retriever"):
            response: retriever_pb2.SearchResponse = await self._up.retriever.Search(
                request, timeout=deadline.remaining(), metadata=tenant_metadata()
            )
        return response

    async def ask(
        self, request: gateway_pb2.AskRequest, top_k: int, timer: StageTimer, deadline: Deadline
    ) -> gateway_pb2.AskResponse:
        key, cached = await self._cached_answer(request, timer, deadline)
        if cached is not None:
            return cached
        retrieved = await self.search(
            request.namespace, request.question, top_k, request.retrieval, timer, deadline
        )
        with timer.stage("generate"), calling("generator"):
            generated: generator_pb2.GenerateResponse = await self._up.generator.Generate(
                generate_request(request, retrieved.hits), timeout=deadline.remaining()
            )
        response = answer_response(generated, retrieved.hits, timer)
        if key is not None:
            self._answers.put(key, response)
        return response

    async def _cached_answer(
        self, request: gateway_pb2.AskRequest, timer: StageTimer, deadline: Deadline
    ) -> tuple[bytes | None, gateway_pb2.AskResponse | None]:
        """The cache key for this question (None when not cached) and the cached answer, if any.

        The key includes the namespace's index version, read from the database
        the ingests write: after any change to the namespace no older answer matches.
        """
        if not self._answers.enabled or request.skip_cache:
            return None, None
        with timer.stage("cache") as span, calling("retriever"):
            version = await self._up.retriever.GetIndexVersion(
                retriever_pb2.GetIndexVersionRequest(namespace=request.namespace),
                timeout=deadline.remaining(),
                metadata=tenant_metadata(),
            )
            key = cache_key(request, version.version)
            cached = self._answers.get(key)
            span.set_attribute("rag.gateway.index_version", version.version)
            span.set_attribute("rag.gateway.cache_hit", cached is not None)
        instruments.record_answer_cache(hit=cached is not None)
        if cached is not None:
            cached.cached = True
            cached.timings.extend(timer.to_proto())
        return key, cached

    async def ask_stream(
        self, request: gateway_pb2.AskRequest, top_k: int, timer: StageTimer, deadline: Deadline
    ) -> AsyncIterator[gateway_pb2.AskStreamResponse]:
        key, cached = await self._cached_answer(request, timer, deadline)
        if cached is not None:
            # The same three events as a fresh answer; the text as one delta.
            sources = [gateway_pb2.Source(number=s.number, hit=s.hit) for s in cached.sources]
            yield gateway_pb2.AskStreamResponse(sources=gateway_pb2.SourcesEvent(sources=sources))
            yield gateway_pb2.AskStreamResponse(delta=generator_pb2.AnswerDelta(text=cached.answer))
            yield gateway_pb2.AskStreamResponse(final=cached)
            return
        retrieved = await self.search(
            request.namespace, request.question, top_k, request.retrieval, timer, deadline
        )
        yield gateway_pb2.AskStreamResponse(
            sources=gateway_pb2.SourcesEvent(sources=numbered_sources(retrieved.hits, cited=set()))
        )
        started = time.perf_counter()
        first_token_at: float | None = None
        final: generator_pb2.GenerateResponse | None = None
        with timer.stage("generate"), calling("generator"):
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
        if key is not None:
            self._answers.put(key, response)
        yield gateway_pb2.AskStreamResponse(final=response)

    async def ingest(
        self,
        namespace: str,
        documents: Sequence[IncomingDocument],
        chunking: gateway_pb2.ChunkingOptions,
        timer: StageTimer,
        deadline: Deadline,
    ) -> list[gateway_pb2.DocumentResult]:
        """One result per document, in order. A document that cannot be read or
        chunked fails alone (status FAILED, with the reason, recorded for
        ListDocuments); a dependency failing fails the request, to be retried."""
        failures = {document.id: document.error for document in documents if document.error is not None}
        readable = [document for document in documents if document.error is None]
        results: dict[str, gateway_pb2.DocumentResult] = {}
        if readable:
            results = await self._ingest_readable(namespace, readable, chunking, failures, timer, deadline)
        if failures:
            await self._record_failures(namespace, documents, failures, deadline)
            for document_id, reason in failures.items():
                results[document_id] = gateway_pb2.DocumentResult(
                    document_id=document_id, status=retriever_pb2.UPSERT_STATUS_FAILED, error=reason
                )
        return [results[document.id] for document in documents]

    async def _ingest_readable(
        self,
        namespace: str,
        documents: Sequence[IncomingDocument],
        chunking: gateway_pb2.ChunkingOptions,
        failures: dict[str, str],
        timer: StageTimer,
        deadline: Deadline,
    ) -> dict[str, gateway_pb2.DocumentResult]:
        with calling("embedder"):
            info = await self._up.embedder.Info(embedder_pb2.InfoRequest(), timeout=deadline.remaining())
        _check_chunking(chunking, info.max_tokens)
        overlap = chunking.overlap_tokens if chunking.HasField("overlap_tokens") else "default"
        fingerprint = f"{info.model}|{chunking.max_tokens}|{overlap}"
        hashes = {document.id: document.content_hash(fingerprint) for document in documents}

        with timer.stage("check"), calling("retriever"):
            stored = await self._up.retriever.GetDocumentHashes(
                retriever_pb2.GetDocumentHashesRequest(namespace=namespace, document_ids=list(hashes)),
                timeout=deadline.remaining(),
                metadata=tenant_metadata(),
            )
        unchanged = {s.document_id: s for s in stored.documents if s.content_hash == hashes[s.document_id]}
        changed = [document for document in documents if document.id not in unchanged]

        records = await self._chunk_documents(changed, hashes, chunking, failures, timer, deadline)
        results = {
            document_id: gateway_pb2.DocumentResult(
                document_id=document_id,
                status=retriever_pb2.UPSERT_STATUS_UNCHANGED,
                chunk_count=s.chunk_count,
            )
            for document_id, s in unchanged.items()
        }
        for result in await self._embed_and_upsert(namespace, records, timer, deadline):
            results[result.document_id] = result
        return results

    async def _record_failures(
        self,
        namespace: str,
        documents: Sequence[IncomingDocument],
        failures: dict[str, str],
        deadline: Deadline,
    ) -> None:
        titles = {document.id: document.title for document in documents}
        with calling("retriever"):
            await self._up.retriever.RecordFailures(
                retriever_pb2.RecordFailuresRequest(
                    namespace=namespace,
                    documents=[
                        retriever_pb2.FailedDocument(
                            document_id=document_id, title=titles[document_id], reason=reason
                        )
                        for document_id, reason in failures.items()
                    ],
                ),
                timeout=deadline.remaining(),
                metadata=tenant_metadata(),
            )

    async def list_documents(
        self, request: gateway_pb2.ListDocumentsRequest, deadline: Deadline
    ) -> gateway_pb2.ListDocumentsResponse:
        with calling("retriever"):
            listed = await self._up.retriever.ListDocuments(
                retriever_pb2.ListDocumentsRequest(
                    namespace=request.namespace,
                    state=request.state,
                    page_size=request.page_size,
                    page_token=request.page_token,
                ),
                timeout=deadline.remaining(),
                metadata=tenant_metadata(),
            )
        return gateway_pb2.ListDocumentsResponse(
            documents=listed.documents, next_page_token=listed.next_page_token
        )

    async def _chunk_documents(
        self,
        documents: Sequence[IncomingDocument],
        hashes: dict[str, str],
        chunking: gateway_pb2.ChunkingOptions,
        failures: dict[str, str],
        timer: StageTimer,
        deadline: Deadline,
    ) -> list[retriever_pb2.DocumentRecord]:
        """The documents' records with their chunks (no embeddings yet), in the documents' order.

        A document the embedder refuses to chunk (INVALID_ARGUMENT), or that
        yields no chunk, goes into `failures` instead.

        A few Chunk calls run at once: each is one tokenizer pass on the
        embedder, so a handful keeps it busy without crowding out queries.
        """
        slots = asyncio.Semaphore(_CHUNK_CALLS_IN_FLIGHT)
        overlap = chunking.overlap_tokens if chunking.HasField("overlap_tokens") else None

        async def chunk(document: IncomingDocument) -> retriever_pb2.DocumentRecord | None:
            async with slots:
                try:
                    with calling("embedder"):
                        chunked = await self._up.embedder.Chunk(
                            embedder_pb2.ChunkRequest(
                                text=document.text, max_tokens=chunking.max_tokens, overlap_tokens=overlap
                            ),
                            timeout=deadline.remaining(),
                        )
                except InvalidArgument as refused:
                    failures[document.id] = refused.message
                    return None
            if not chunked.chunks:
                failures[document.id] = "the document has no text to index"
                return None
            return _document_record(document, hashes[document.id], chunked.chunks)

        with timer.stage("chunk") as span:
            span.set_attribute("rag.gateway.documents", len(documents))
            records = await _all(chunk(document) for document in documents)
        return [record for record in records if record is not None]

    async def _embed_and_upsert(
        self,
        namespace: str,
        records: Sequence[retriever_pb2.DocumentRecord],
        timer: StageTimer,
        deadline: Deadline,
    ) -> list[gateway_pb2.DocumentResult]:
        """Embeds every chunk and upserts each document as soon as all its chunks are embedded.

        The upserts run beside the embedding stream, so the database's work
        overlaps the model's. A document is upserted whole (one Upsert each,
        atomic), never before its last chunk is embedded. Upserts go one at a
        time, in the order documents become ready, as they did before the
        stream: the database load of an ingest stays what it was. If the
        embedding fails, the documents still waiting are dropped, but the
        upsert under way is let finish (see _not_cut_short).
        """
        ready: asyncio.Queue[retriever_pb2.DocumentRecord | None] = asyncio.Queue()
        results: list[gateway_pb2.DocumentResult] = []
        upsert_ms = 0.0

        async def embed() -> None:
            await self._embed_chunks(records, ready.put_nowait, timer, deadline)
            ready.put_nowait(None)  # no more documents to come

        async def upsert() -> None:
            nonlocal upsert_ms
            while (record := await ready.get()) is not None:
                started = time.perf_counter()
                results.extend(await _not_cut_short(self._upsert(namespace, record, deadline)))
                upsert_ms += (time.perf_counter() - started) * 1000

        await _all([embed(), upsert()])
        # The upserts overlap the embed stage, so theirs is a total, not a span of the request.
        timer.record("upsert", upsert_ms)
        return results

    async def _embed_chunks(
        self,
        records: Sequence[retriever_pb2.DocumentRecord],
        on_document_embedded: Callable[[retriever_pb2.DocumentRecord], None],
        timer: StageTimer,
        deadline: Deadline,
    ) -> None:
        """Fills in every chunk's embedding through one EmbedStream call, batching chunks across
        documents, and hands on each document as soon as its last chunk is embedded."""
        chunks = [chunk for record in records for chunk in record.chunks]
        owners = [index for index, record in enumerate(records) for _ in record.chunks]
        missing = [len(record.chunks) for record in records]
        for record in records:
            if not record.chunks:  # nothing to embed: ready as it is
                on_document_embedded(record)
        size = self._embed_batch_size
        batches = [[c.text for c in chunks[start : start + size]] for start in range(0, len(chunks), size)]
        with timer.stage("embed") as span, calling("embedder"):
            span.set_attribute("rag.gateway.chunks", len(chunks))
            span.set_attribute("rag.gateway.embed_batches", len(batches))
            responses = embed_stream(
                self._up.embedder,
                batches,
                # Chunks are cut to fit the model, so one too long to embed
                # whole is a bug: the embedder rejects it (INVALID_ARGUMENT)
                # rather than quietly embedding only its beginning.
                input_type=embedder_pb2.INPUT_TYPE_DOCUMENT,
                truncate=False,
                window=self._embed_stream_window,
                rpc_timeout=deadline.remaining(),
            )
            position = 0  # in `chunks`, of the next chunk to get its embedding
            async with aclosing(responses):
                async for embedded in responses:
                    for embedding in embedded.embeddings:
                        chunks[position].embedding.extend(embedding.values)
                        owner = owners[position]
                        missing[owner] -= 1
                        if missing[owner] == 0:
                            on_document_embedded(records[owner])
                        position += 1

    async def _upsert(
        self, namespace: str, record: retriever_pb2.DocumentRecord, deadline: Deadline
    ) -> list[gateway_pb2.DocumentResult]:
        with _tracer.start_as_current_span("rag.gateway.upsert") as span, calling("retriever"):
            span.set_attribute("rag.gateway.chunks", len(record.chunks))
            upserted = await self._up.retriever.Upsert(
                retriever_pb2.UpsertRequest(namespace=namespace, documents=[record]),
                timeout=deadline.remaining(),
                metadata=tenant_metadata(),
            )
        return [
            gateway_pb2.DocumentResult(
                document_id=result.document_id, status=result.status, chunk_count=result.chunk_count
            )
            for result in upserted.results
        ]

    async def delete(
        self, request: gateway_pb2.DeleteDocumentsRequest, timer: StageTimer, deadline: Deadline
    ) -> retriever_pb2.DeleteResponse:
        with timer.stage("delete"), calling("retriever"):
            response: retriever_pb2.DeleteResponse = await self._up.retriever.Delete(
                retriever_pb2.DeleteRequest(
                    namespace=request.namespace,
                    document_ids=request.document_ids,
                    filter=request.filter if request.HasField("filter") else None,
                ),
                timeout=deadline.remaining(),
                metadata=tenant_metadata(),
            )
        return response


async def _all(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Runs the coroutines concurrently; their results in order, or the first failure as itself,
    with the others cancelled and finished first, so no call is left running."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coroutine) for coroutine in coroutines]
    except ExceptionGroup as failed:
        # The first failure is the cause, later ones mostly its echoes. It is
        # raised as itself, its own cause kept, for the error interceptor to map.
        first = failed.exceptions[0]
        raise first from first.__cause__
    return [task.result() for task in tasks]


async def _not_cut_short(coroutine: Coroutine[Any, Any, T]) -> T:
    """Awaits the coroutine to its end even if the caller is cancelled meanwhile, then passes
    the cancellation on.

    For writes: a cancelled Upsert may still commit on the retriever after the
    gateway has answered, and the caller could not tell what was stored. Its
    deadline bounds the wait.
    """
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller gets
        raise


def _check_chunking(chunking: gateway_pb2.ChunkingOptions, model_max_tokens: int) -> None:
    """Refuses bad chunking options for the whole request, up front: once
    they are known good, an embedder refusing to chunk a document is about
    that document alone."""
    limit = model_max_tokens - 2  # room for the special tokens the model adds
    if chunking.max_tokens:
        require_range(chunking.max_tokens, "chunking.max_tokens", 16, limit)
    if chunking.HasField("overlap_tokens") and chunking.max_tokens:
        require_range(chunking.overlap_tokens, "chunking.overlap_tokens", 0, chunking.max_tokens // 2)
    elif chunking.HasField("overlap_tokens"):
        require_range(chunking.overlap_tokens, "chunking.overlap_tokens", 0, limit // 2)


def _document_record(
    document: IncomingDocument, content_hash: str, chunks: Sequence[embedder_pb2.TextChunk]
) -> retriever_pb2.DocumentRecord:
    metadata = struct_pb2.Struct()
    metadata.update(document.metadata)
    return retriever_pb2.DocumentRecord(
        document_id=document.id,
        content_hash=content_hash,
        title=document.title,
        metadata=metadata,
        chunks=[
            retriever_pb2.ChunkRecord(
                index=i,
                text=c.text,
                start_char=c.start_char,
                end_char=c.end_char,
                pages=document.chunk_pages(c.start_char, c.end_char),
            )
            for i, c in enumerate(chunks)
        ],
    )


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
