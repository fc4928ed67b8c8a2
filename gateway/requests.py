"""Validation of gateway requests: the first line of defence, with clear messages.

Each check names the field and what is accepted. The services downstream
validate again; this layer only makes sure the common mistakes are caught
before any work is spent on them.

A document sent as a file is an exception: what is wrong with a file (corrupt,
encrypted, no text, too large for its format, too costly to parse) shows only
once it is read, so it fails that document alone (IncomingDocument.error), not
the request. Files are read by gateway/extraction.py, within its limits.

Metadata is bounded as JSON (GATEWAY_MAX_METADATA_BYTES) because every chunk
row and every hit carries a copy; a Struct far too large on the wire is refused
before it is converted at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway import formats
from gateway.concurrency import Deadline, run_all
from gateway.config import GatewaySettings
from gateway.extraction import FileReader
from gateway.formats import MAX_TITLE_CHARS
from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from services.common.errors import InvalidArgument
from services.common.limits import (
    metadata_limit,
    require_document_id,
    require_history,
    require_metadata_bytes,
    require_top_k,
)
from services.common.struct_values import struct_to_dict
from services.common.validation import require_range, require_text

# A Struct's wire form is at most about 2.75 times its compact JSON (a list of
# zeros: 11 bytes each on the wire, "0.0," in JSON), so one more than three
# times the limit on the wire is over it as JSON, whatever it holds.
_METADATA_WIRE_BYTES_PER_JSON_BYTE = 3


@dataclass(frozen=True)
class IncomingDocument:
    id: str
    title: str
    text: str
    metadata: dict[str, Any]
    # Character offset in text where each page of the source file begins, page 1
    # first; empty unless the document came as a paged file (PDF). Each chunk's
    # ChunkRecord.pages is chunk_pages(start_char, end_char).
    page_starts: tuple[int, ...] = ()
    # Why the document could not be read, when it came as a file that cannot be
    # (corrupt, encrypted, no text, unknown type, text too long); text is then
    # empty. Such a document must not be hashed, chunked or stored: the pipeline
    # reports it as UPSERT_STATUS_FAILED with this as DocumentResult.error, and
    # the request's other documents go on.
    error: str | None = None

    def content_hash(self, fingerprint: str) -> str:
        """Changes whenever anything that shapes the stored chunks changes.

        fingerprint covers what is outside the document: the embedding model
        and the chunking settings. A file is hashed by its extracted text and
        pages, not its bytes: the same file sent again is unchanged, and a
        parser upgrade that reads it better re-ingests it.
        """
        shape: list[Any] = [fingerprint, self.title, self.text, self.metadata]
        if self.page_starts:
            # Only when there are pages, so the hashes of text documents stay as they were.
            shape.append(list(self.page_starts))
        canonical = json.dumps(shape, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def chunk_pages(self, start_char: int, end_char: int) -> list[int]:
        """The 1-based pages of the source file a chunk [start_char, end_char) spans; [] without pages."""
        return formats.pages_of(self.page_starts, start_char, end_char)


def top_k(options: gateway_pb2.RetrievalOptions, settings: GatewaySettings, field: str) -> int:
    if not options.HasField("top_k"):
        return settings.default_top_k
    return require_top_k(options.top_k, field)


def question(text: str, settings: GatewaySettings, field: str) -> str:
    return require_text(text, field, max_chars=settings.max_question_chars)


def history(turns: Sequence[common_pb2.ChatTurn], field: str) -> None:
    """The generator's own limits, checked before any retrieval is spent on the question."""
    require_history([turn.content for turn in turns], field)


async def documents(
    protos: Sequence[gateway_pb2.Document], settings: GatewaySettings, files: FileReader, deadline: Deadline
) -> list[IncomingDocument]:
    """The request's documents, checked, and their files read: each file its document's success or failure."""
    # Checking and converting a request of many MiB is CPU work: off the event loop.
    checked = await asyncio.to_thread(_checked_documents, protos, settings)
    return await run_all(_read(document, files, deadline) for document in checked)


def _checked_documents(
    protos: Sequence[gateway_pb2.Document], settings: GatewaySettings
) -> list[IncomingDocument | _UnreadFile]:
    require_range(len(protos), "documents (count)", 1, settings.max_documents_per_request)
    seen: set[str] = set()
    result = []
    for index, proto in enumerate(protos):
        document = _document(proto, f"documents[{index}]", settings)
        if document.id in seen:
            raise InvalidArgument(
                f"documents[{index}].id {document.id!r} appears twice; ids must be unique in a request",
                field=f"documents[{index}].id",
            )
        seen.add(document.id)
        result.append(document)
    return result


@dataclass(frozen=True)
class _UnreadFile:
    """A document sent as a file, checked but not read yet."""

    id: str
    title: str
    metadata: dict[str, Any]
    file: gateway_pb2.File


def _document(
    proto: gateway_pb2.Document, field: str, settings: GatewaySettings
) -> IncomingDocument | _UnreadFile:
    require_document_id(proto.id, f"{field}.id")
    if len(proto.title) > MAX_TITLE_CHARS:
        raise InvalidArgument(
            f"{field}.title must be at most {MAX_TITLE_CHARS} characters", field=f"{field}.title"
        )
    metadata = _metadata(proto, f"{field}.metadata", settings) if proto.HasField("metadata") else {}
    if proto.WhichOneof("body") == "file":
        return _UnreadFile(proto.id, proto.title, metadata, proto.file)
    text = _body(proto, field, settings.max_document_bytes)
    if not text.strip():
        raise InvalidArgument(
            f"{field} (id {proto.id!r}) has no text; send a non-blank text, utf8_content or file", field=field
        )
    return IncomingDocument(id=proto.id, title=proto.title, text=text, metadata=metadata)


def _metadata(proto: gateway_pb2.Document, field: str, settings: GatewaySettings) -> dict[str, Any]:
    max_bytes = settings.max_metadata_bytes
    setting = settings.variable("max_metadata_bytes")
    wire_bytes = proto.metadata.ByteSize()
    if wire_bytes > _METADATA_WIRE_BYTES_PER_JSON_BYTE * max_bytes:
        raise InvalidArgument(
            f"{field} is {wire_bytes} bytes encoded, so more than {max_bytes} as JSON; "
            f"{metadata_limit(max_bytes, setting)}",
            field=field,
        )
    metadata = struct_to_dict(proto.metadata, field)
    require_metadata_bytes(metadata, field, max_bytes, setting)
    return metadata


async def _read(
    document: IncomingDocument | _UnreadFile, files: FileReader, deadline: Deadline
) -> IncomingDocument:
    """The file's text and pages, or a document that failed with the reason."""
    if isinstance(document, IncomingDocument):
        return document
    file = document.file
    try:
        extracted = await files.read(file.content, file.content_type, file.filename, deadline)
    except formats.ExtractionError as error:
        return _failed(document, str(error))
    if not extracted.text.strip():
        return _failed(document, "no text found in the file")
    # The caller's title wins; a file's own title is cut to the limit, as it can be anything.
    title = document.title or extracted.title or file.filename[:MAX_TITLE_CHARS]
    return IncomingDocument(
        id=document.id,
        title=title,
        text=extracted.text,
        metadata=document.metadata,
        page_starts=extracted.page_starts,
    )


def _failed(document: _UnreadFile, reason: str) -> IncomingDocument:
    return IncomingDocument(
        id=document.id, title=document.title, text="", metadata=document.metadata, error=reason
    )


def _body(proto: gateway_pb2.Document, field: str, max_bytes: int) -> str:
    body = proto.WhichOneof("body")
    if body == "utf8_content":
        raw = proto.utf8_content
        size = len(raw)
    else:
        raw = b""
        size = len(proto.text.encode())
    if size > max_bytes:
        raise InvalidArgument(
            f"{field} (id {proto.id!r}) is {size} bytes; documents of at most {max_bytes} bytes are accepted",
            field=f"{field}.{body or 'text'}",
        )
    if body != "utf8_content":
        return proto.text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidArgument(
            f"{field}.utf8_content (id {proto.id!r}) is not valid UTF-8 (byte {error.start}); "
            "send UTF-8 encoded text",
            field=f"{field}.utf8_content",
        ) from error
