"""Turns files and folders of text, Markdown, PDF and HTML into gateway Documents.

Text and Markdown are sent as UTF-8 text; PDF and HTML as files, which the
gateway parses, so every client gets the same extraction.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import struct_pb2

from rag.gateway.v1 import gateway_pb2

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
FILE_SUFFIXES = {".pdf", ".html", ".htm"}
SUFFIXES = TEXT_SUFFIXES | FILE_SUFFIXES


@dataclass(frozen=True)
class Found:
    """What find_files found: (file, root it was found under), and the links it left alone."""

    files: list[tuple[Path, Path]]
    # (link, folder it was found under) for every symbolic link that leads out of that folder.
    outside_links: list[tuple[Path, Path]]


def find_files(paths: Iterable[Path]) -> Found:
    """Every file of SUFFIXES under the folders given, and the files given by name, in a stable order.

    Symbolic links in a folder: one that leads out of it (say to ~/.ssh) is not
    followed, and is listed in outside_links. One that stays inside points at
    something the walk reaches by its own path, so each file is read once, under
    its own path (under the link's only when just the link's name has one of
    SUFFIXES), and linked folders are never entered: a link to a parent cannot
    loop. A file or folder given by name is read wherever it is.

    Raises FileNotFoundError for a path that does not exist, and ValueError for
    a file given by name of another kind.
    """
    files: list[tuple[Path, Path]] = []
    outside: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            in_folder, links_out = _folder_files(path)
            files += [(f, path) for f in in_folder]
            outside += [(link, path) for link in links_out]
        elif path.is_file():
            if not _ingested(path):
                raise ValueError(f"{path}: only {', '.join(sorted(SUFFIXES))} files are ingested")
            files.append((path, path.parent))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return Found(files, list(dict.fromkeys(outside)))


def _folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files to ingest, links that lead out of the folder), each sorted."""
    real_folder = _real(folder)
    files: dict[Path, Path] = {}  # real path -> path it is read under
    links: list[Path] = []
    # followlinks=False: a linked folder is listed but not entered; links are judged below.
    for directory, folders, names in os.walk(folder):
        for path in (Path(directory, name) for name in [*folders, *names]):
            if path.is_symlink():
                links.append(path)
            elif path.is_file() and _ingested(path):
                files[_real(path)] = path
    outside = []
    for link in sorted(links):
        target = _real(link)
        if not target.is_relative_to(real_folder):
            outside.append(link)
        elif target.is_file() and _ingested(link):
            files.setdefault(target, link)
        # A linked folder inside was walked under its own path.
    return sorted(files.values()), outside


def _real(path: Path) -> Path:
    """The path with every link resolved; a broken or looping link resolves as far as it goes."""
    return Path(os.path.realpath(path))


def _ingested(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


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


def batches(items: list[tuple[Path, Path]], size: int, max_bytes: int) -> Iterator[list[tuple[Path, Path]]]:
    """At most `size` files a batch, and no more than `max_bytes` of them unless one file alone is larger:
    a request must fit the gateway's message limit."""
    batch: list[tuple[Path, Path]] = []
    batch_bytes = 0
    for item in items:
        file_bytes = item[0].stat().st_size
        if batch and (len(batch) == size or batch_bytes + file_bytes > max_bytes):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(item)
        batch_bytes += file_bytes
    if batch:
        yield batch
