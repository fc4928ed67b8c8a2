"""The ingest side: IngestDocuments, and the namespace's other document calls, delete and list.

Ingest: skip documents whose content hash is stored, chunk the rest (a few
documents at a time), embed all their chunks in batches through one stream,
and upsert each document as soon as its chunks are embedded, while later
batches are still in the model. A document that cannot be read or chunked
fails alone and is recorded as failed, for ListDocuments to show.

Every downstream call gets the time left of the caller's deadline; every
retriever call carries the call's tenant, which the channel signs into the
call's token (services/common/tenant.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing

from google.protobuf import struct_pb2
from opentelemetry import trace

from gateway import error_details
from gateway.concurrency import Deadline, not_cut_short, run_all
from gateway.embedding import embed_stream
from gateway.requests import IncomingDocument
from gateway.upstream import Upstreams, calling
from rag.embedder.v1 import embedder_pb2
from rag.gateway.v1 import gateway_pb2
from rag.retriever.v1 import retriever_pb2
from services.common.errors import InvalidArgument
from services.common.limits import require_chunking
from services.common.tenant import Tenant
from services.common.timing import StageTimer

_tracer = trace.get_tracer(__name__)

# Chunk calls of one ingest in flight at once.
_CHUNK_CALLS_IN_FLIGHT = 4


class IngestPipeline:
    def __init__(self, upstreams: Upstreams, embed_batch_size: int, embed_stream_window: int) -> None:
        self._up = upstreams
        self._embed_batch_size = embed_batch_size
        self._embed_stream_window = embed_stream_window

    async def ingest(
        self,
        tenant: Tenant,
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
            results = await self._ingest_readable(tenant, readable, chunking, failures, timer, deadline)
        if failures:
            await self._record_failures(tenant, documents, failures, deadline)
            for document_id, reason in failures.items():
                results[document_id] = gateway_pb2.DocumentResult(
                    document_id=document_id, status=retriever_pb2.UPSERT_STATUS_FAILED, error=reason
                )
        return [results[document.id] for document in documents]

    async def _ingest_readable(
        self,
        tenant: Tenant,
        documents: Sequence[IncomingDocument],
        chunking: gateway_pb2.ChunkingOptions,
        failures: dict[str, str],
        timer: StageTimer,
        deadline: Deadline,
    ) -> dict[str, gateway_pb2.DocumentResult]:
        with calling("embedder"):
            info = await self._up.embedder.Info(embedder_pb2.InfoRequest(), timeout=deadline.remaining())
        # Bad options fail the whole request, up front: once they are known good,
        # the embedder refusing to chunk a document is about that document alone.
        overlap = chunking.overlap_tokens if chunking.HasField("overlap_tokens") else None
        require_chunking(chunking.max_tokens or None, overlap, info.max_tokens, field_prefix="chunking.")
        fingerprint = f"{info.model}|{chunking.max_tokens}|{'default' if overlap is None else overlap}"
        hashes = {document.id: document.content_hash(fingerprint) for document in documents}

        with timer.stage("check"), calling("retriever"):
            stored = await self._up.retriever.GetDocumentHashes(
                retriever_pb2.GetDocumentHashesRequest(namespace=tenant.namespace, document_ids=list(hashes)),
                timeout=deadline.remaining(),
                metadata=tenant.metadata(),
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
        for result in await self._embed_and_upsert(tenant, records, timer, deadline):
            results[result.document_id] = result
        return results

    async def _record_failures(
        self,
        tenant: Tenant,
        documents: Sequence[IncomingDocument],
        failures: dict[str, str],
        deadline: Deadline,
    ) -> None:
        titles = {document.id: document.title for document in documents}
        with calling("retriever"):
            await self._up.retriever.RecordFailures(
                retriever_pb2.RecordFailuresRequest(
                    namespace=tenant.namespace,
                    documents=[
                        retriever_pb2.FailedDocument(
                            document_id=document_id, title=titles[document_id], reason=reason
                        )
                        for document_id, reason in failures.items()
                    ],
                ),
                timeout=deadline.remaining(),
                metadata=tenant.metadata(),
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
            records = await run_all(chunk(document) for document in documents)
        return [record for record in records if record is not None]

    async def _embed_and_upsert(
        self,
        tenant: Tenant,
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
        upsert under way is let finish (see not_cut_short).
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
                results.extend(await not_cut_short(self._upsert(tenant, record, deadline)))
                upsert_ms += (time.perf_counter() - started) * 1000

        await run_all([embed(), upsert()])
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
                self._up.embedder_streams,
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
        self, tenant: Tenant, record: retriever_pb2.DocumentRecord, deadline: Deadline
    ) -> list[gateway_pb2.DocumentResult]:
        with _tracer.start_as_current_span("rag.gateway.upsert") as span, calling("retriever"):
            span.set_attribute("rag.gateway.chunks", len(record.chunks))
            upserted = await self._up.retriever.Upsert(
                retriever_pb2.UpsertRequest(namespace=tenant.namespace, documents=[record]),
                timeout=deadline.remaining(),
                metadata=tenant.metadata(),
            )
        return [
            gateway_pb2.DocumentResult(
                document_id=result.document_id, status=result.status, chunk_count=result.chunk_count
            )
            for result in upserted.results
        ]

    async def delete(
        self,
        request: gateway_pb2.DeleteDocumentsRequest,
        tenant: Tenant,
        timer: StageTimer,
        deadline: Deadline,
    ) -> retriever_pb2.DeleteResponse:
        with timer.stage("delete"), calling("retriever", error_details.DELETE):
            response: retriever_pb2.DeleteResponse = await self._up.retriever.Delete(
                retriever_pb2.DeleteRequest(
                    namespace=tenant.namespace,
                    document_ids=request.document_ids,
                    filter=request.filter if request.HasField("filter") else None,
                ),
                timeout=deadline.remaining(),
                metadata=tenant.metadata(),
            )
        return response

    async def list_documents(
        self, request: gateway_pb2.ListDocumentsRequest, tenant: Tenant, deadline: Deadline
    ) -> gateway_pb2.ListDocumentsResponse:
        with calling("retriever", error_details.LIST):
            listed = await self._up.retriever.ListDocuments(
                retriever_pb2.ListDocumentsRequest(
                    namespace=tenant.namespace,
                    state=request.state,
                    page_size=request.page_size,
                    page_token=request.page_token,
                ),
                timeout=deadline.remaining(),
                metadata=tenant.metadata(),
            )
        return gateway_pb2.ListDocumentsResponse(
            documents=listed.documents, next_page_token=listed.next_page_token
        )


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
