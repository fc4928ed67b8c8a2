"""Validation of gateway requests: the first line of defence, with clear messages.

Each check names the field and what is accepted. The services downstream
validate again; this layer only makes sure the common mistakes are caught
before any work is spent on them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from gateway.config import GatewaySettings
from rag.gateway.v1 import gateway_pb2
from services.common.errors import InvalidArgument
from services.common.validation import require_range, require_text

MAX_DOCUMENT_ID_CHARS = 256
MAX_TITLE_CHARS = 1000


@dataclass(frozen=True)
class IncomingDocument:
    id: str
    title: str
    text: str
    metadata: dict[str, Any]

    def content_hash(self, fingerprint: str) -> str:
        """Changes whenever anything that shapes the stored chunks changes.

        fingerprint covers what is outside the document: the embedding model
        and the chunking settings.
        """
        canonical = json.dumps(
            [fingerprint, self.title, self.text, self.metadata], sort_keys=True, ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def top_k(options: gateway_pb2.RetrievalOptions, settings: GatewaySettings, field: str) -> int:
    if not options.HasField("top_k"):
        return settings.default_top_k
    return require_range(options.top_k, field, 1, 100)


def question(text: str, settings: GatewaySettings, field: str) -> str:
    return require_text(text, field, max_chars=settings.max_question_chars)


def documents(protos: Sequence[gateway_pb2.Document], settings: GatewaySettings) -> list[IncomingDocument]:
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


def _document(proto: gateway_pb2.Document, field: str, settings: GatewaySettings) -> IncomingDocument:
    if not proto.id.strip() or len(proto.id) > MAX_DOCUMENT_ID_CHARS:
        raise InvalidArgument(
            f"{field}.id must be 1..{MAX_DOCUMENT_ID_CHARS} characters and not blank, got {proto.id!r:.80}",
            field=f"{field}.id",
        )
    if len(proto.title) > MAX_TITLE_CHARS:
        raise InvalidArgument(
            f"{field}.title must be at most {MAX_TITLE_CHARS} characters", field=f"{field}.title"
        )
    text = _body(proto, field, settings.max_document_bytes)
    if not text.strip():
        raise InvalidArgument(
            f"{field} (id {proto.id!r}) has no text; send a non-blank text or utf8_content", field=field
        )
    metadata = json_format.MessageToDict(proto.metadata) if proto.HasField("metadata") else {}
    return IncomingDocument(id=proto.id, title=proto.title, text=text, metadata=metadata)


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
