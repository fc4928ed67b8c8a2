"""Documents to ingest: text held in memory, or a file's bytes for the gateway to extract the text from.

A file goes as it is, with its name: the gateway parses PDF, HTML, Markdown and
plain text itself (by content_type, else by the name's extension), so every
client gets the same extraction and none needs a parser.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

from google.protobuf import struct_pb2

from rag.gateway.v1 import gateway_pb2

# What a document's metadata may hold: what JSON can.
JsonValue: TypeAlias = str | int | float | bool | Mapping[str, "JsonValue"] | Sequence["JsonValue"] | None
Metadata: TypeAlias = Mapping[str, JsonValue]


def text_document(
    document_id: str, text: str, *, title: str = "", metadata: Metadata | None = None
) -> gateway_pb2.Document:
    """A document whose text is given; re-ingesting its id replaces it."""
    return gateway_pb2.Document(id=document_id, title=title, text=text, metadata=_struct(metadata))


def file_document(
    document_id: str,
    content: bytes,
    *,
    filename: str,
    content_type: str = "",
    title: str = "",
    metadata: Metadata | None = None,
) -> gateway_pb2.Document:
    """A file (PDF, HTML, Markdown or plain text) for the gateway to extract the text from.

    content_type, e.g. "application/pdf"; empty, the filename's extension decides
    (.pdf, .html/.htm, .md, .txt). Without a title the gateway takes the file's
    own (PDF metadata, HTML <title>), else its name.
    """
    body = gateway_pb2.File(content=content, content_type=content_type, filename=filename)
    return gateway_pb2.Document(id=document_id, title=title, file=body, metadata=_struct(metadata))


def document_from_path(
    path: str | os.PathLike[str],
    *,
    document_id: str | None = None,
    title: str = "",
    metadata: Metadata | None = None,
) -> gateway_pb2.Document:
    """file_document for a file on disk, its id its name unless given."""
    file = Path(path)
    return file_document(
        document_id if document_id is not None else file.name,
        file.read_bytes(),
        filename=file.name,
        title=title,
        metadata=metadata,
    )


def _struct(metadata: Metadata | None) -> struct_pb2.Struct | None:
    if metadata is None:
        return None
    struct = struct_pb2.Struct()
    struct.update(metadata)
    return struct
