"""Turns files and folders of text, Markdown, PDF and HTML into gateway Documents.

Text and Markdown are sent as UTF-8 text; PDF and HTML as files, which the
gateway parses, so every client gets the same extraction.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import struct_pb2

from rag.gateway.v1 import gateway_pb2

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
FILE_SUFFIXES = {".pdf", ".html", ".htm"}
SUFFIXES = TEXT_SUFFIXES | FILE_SUFFIXES


def find_files(paths: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(file, root it was found under) for every file of SUFFIXES, in a stable order.

    Raises FileNotFoundError for a path that does not exist, and ValueError for
    a file given by name of another kind.
    """
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            found += [
                (f, path) for f in sorted(path.rglob("*")) if f.is_file() and f.suffix.lower() in SUFFIXES
            ]
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise ValueError(f"{path}: only {', '.join(sorted(SUFFIXES))} files are ingested")
            found.append((path, path.parent))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def to_document(file: Path, root: Path) -> gateway_pb2.Document:
    """The id is the path below the root, so re-ingesting a folder replaces in place."""
    content = file.read_bytes()
    metadata = struct_pb2.Struct()
    metadata.update({"source": str(file), "format": file.suffix.lower().lstrip(".")})
    document_id = file.relative_to(root).as_posix()
    if file.suffix.lower() in FILE_SUFFIXES:
        # No title: the gateway takes the file's own (PDF metadata, HTML <title>), else its name.
        content_type = mimetypes.guess_type(file.name)[0] or ""
        body = gateway_pb2.File(content=content, content_type=content_type, filename=file.name)
        return gateway_pb2.Document(id=document_id, file=body, metadata=metadata)
    return gateway_pb2.Document(
        id=document_id, title=_title(content, file), utf8_content=content, metadata=metadata
    )


def _title(content: bytes, file: Path) -> str:
    """The first Markdown heading, else the file name."""
    for line in content.decode("utf-8", errors="replace").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return file.stem.replace("-", " ").replace("_", " ")


def batches(items: list[tuple[Path, Path]], size: int) -> Iterator[list[tuple[Path, Path]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
