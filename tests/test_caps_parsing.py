"""Files read within limits (gateway/extraction.py): bytes per format, and PDF and HTML
parsed in worker processes that a slow, memory-hungry, timed-out or cancelled parse
cannot outlive.

The hostile PDFs are made here: small files whose content streams cost seconds of
CPU per page, or hundreds of MiB to parse.
"""

from __future__ import annotations

import asyncio

import psutil
import pytest

from gateway import requests
from gateway.concurrency import Deadline
from gateway.config import GatewaySettings
from gateway.extraction import FileLimits, FileReader
from gateway.formats import ExtractedText, ExtractionError
from rag.gateway.v1 import gateway_pb2
from services.common.errors import DeadlineExceeded
from tests.test_formats import PAGES, make_pdf, pdf_of_streams

_DRAWN_WORD = b"BT /F1 12 Tf 72 712 Td (word) Tj ET\n"


def slow_pdf() -> bytes:
    """About 33 KiB; each of its 200 pages draws 20,000 words: seconds of parsing per page."""
    return pdf_of_streams([_DRAWN_WORD * 20_000], [0] * 200)


def memory_hungry_pdf() -> bytes:
    """About 20 KiB; its one page shows a 20-million-character string: some 300 MiB to parse."""
    return pdf_of_streams([b"BT /F1 12 Tf 72 712 Td (" + b"a" * 20_000_000 + b") Tj ET"], [0])


def _file(document_id: str, content: bytes, filename: str) -> gateway_pb2.Document:
    return gateway_pb2.Document(id=document_id, file=gateway_pb2.File(content=content, filename=filename))


def _text(document_id: str) -> gateway_pb2.Document:
    return gateway_pb2.Document(id=document_id, text="Lighthouse keepers log the weather at dawn.")


async def _ingested(settings: GatewaySettings, *documents: gateway_pb2.Document) -> dict[str, str | None]:
    files = FileReader(FileLimits.from_settings(settings))
    read = await requests.documents(documents, settings, files, Deadline(120))
    return {document.id: document.error for document in read}


async def test_a_pdf_that_takes_too_long_to_parse_fails_alone() -> None:
    errors = await _ingested(
        GatewaySettings(parse_timeout_s=2),
        _file("slow", slow_pdf(), "slow.pdf"),
        _file("manual", make_pdf(PAGES), "manual.pdf"),
        _file("page", b"<title>Page</title><p>Spare lamp bulbs.</p>", "page.html"),
        _text("note"),
    )

    assert errors == {
        "slow": "parsing took longer than 2 s (GATEWAY_PARSE_TIMEOUT_S)",
        "manual": None,
        "page": None,
        "note": None,
    }


async def test_a_parse_that_needs_too_much_memory_fails_alone() -> None:
    errors = await _ingested(
        GatewaySettings(parse_memory_mib=192),
        _file("hungry", memory_hungry_pdf(), "hungry.pdf"),
        _file("manual", make_pdf(PAGES), "manual.pdf"),
        _text("note"),
    )

    assert errors == {
        "hungry": "parsing needed more than 192 MiB (GATEWAY_PARSE_MEMORY_MIB)",
        "manual": None,
        "note": None,
    }


@pytest.mark.parametrize(
    ("content", "filename", "reason"),
    [
        (b"%PDF-" + b"x" * 96, "big.pdf", "the file is 101 bytes; PDF files of at most 100 bytes are read"
         " (GATEWAY_MAX_PDF_BYTES)"),
        (b"<p>" + b"x" * 48 + b"</p>", "big.html", "the file is 55 bytes; HTML files of at most 50 bytes"
         " are read (GATEWAY_MAX_HTML_BYTES)"),
        (b"x" * 21, "big.md", "the file is 21 bytes; text and Markdown files of at most 20 bytes are read"
         " (GATEWAY_MAX_TEXT_FILE_BYTES)"),
        (b"x" * 21, "big.txt", "the file is 21 bytes; text and Markdown files of at most 20 bytes are read"
         " (GATEWAY_MAX_TEXT_FILE_BYTES)"),
    ],
)  # fmt: skip
async def test_a_file_over_its_formats_byte_limit_fails_before_it_is_read(
    content: bytes, filename: str, reason: str
) -> None:
    settings = GatewaySettings(max_pdf_bytes=100, max_html_bytes=50, max_text_file_bytes=20)
    errors = await _ingested(settings, _file("big", content, filename), _text("note"))

    assert errors == {"big": reason, "note": None}


async def test_files_at_their_formats_byte_limit_are_read() -> None:
    page = b"<p>Spare lamp bulbs.</p>"
    settings = GatewaySettings(max_html_bytes=len(page), max_text_file_bytes=5)
    errors = await _ingested(settings, _file("page", page, "page.html"), _file("note", b"bulbs", "note.txt"))

    assert errors == {"page": None, "note": None}


def _workers() -> set[int]:
    """The pids of this process's parse workers: the children of its forkserver."""
    return {
        worker.pid
        for child in psutil.Process().children()
        if "forkserver" in " ".join(child.cmdline())
        for worker in child.children()
    }


async def _worker_of(reading: asyncio.Task[ExtractedText]) -> int:
    """The pid of the worker that `reading` started, once it runs."""
    while not (workers := _workers()):
        assert not reading.done(), "the read ended before its worker was seen"
        await asyncio.sleep(0.01)
    (pid,) = workers
    return pid


async def test_a_cancelled_read_stops_its_worker() -> None:
    files = FileReader(FileLimits.from_settings(GatewaySettings()))
    reading = asyncio.create_task(files.read(slow_pdf(), "application/pdf", "slow.pdf", Deadline(120)))
    pid = await _worker_of(reading)

    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading

    assert not psutil.pid_exists(pid)


async def test_the_calls_deadline_stops_a_parse_and_its_worker() -> None:
    files = FileReader(FileLimits.from_settings(GatewaySettings(parse_timeout_s=120)))
    reading = asyncio.create_task(files.read(slow_pdf(), "application/pdf", "slow.pdf", Deadline(2)))
    pid = await _worker_of(reading)

    with pytest.raises(DeadlineExceeded, match="deadline passed while a file was being parsed"):
        await reading
    assert not psutil.pid_exists(pid)


async def test_parses_beyond_the_limit_wait_for_a_slot() -> None:
    files = FileReader(FileLimits.from_settings(GatewaySettings(max_concurrent_parses=1)))
    slow = asyncio.create_task(files.read(slow_pdf(), "application/pdf", "slow.pdf", Deadline(120)))
    await _worker_of(slow)

    # A small PDF parses in milliseconds, but not while the only slot is taken.
    with pytest.raises(DeadlineExceeded, match="waited to be parsed"):
        await files.read(make_pdf(PAGES), "application/pdf", "manual.pdf", Deadline(1))
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    extracted = await files.read(make_pdf(PAGES), "application/pdf", "manual.pdf", Deadline(60))
    assert extracted.text.startswith(PAGES[0])


async def test_a_file_the_parser_cannot_read_fails_with_the_reason() -> None:
    files = FileReader(FileLimits.from_settings(GatewaySettings()))

    with pytest.raises(ExtractionError, match="not a valid PDF"):
        await files.read(b"%PDF-1.4 then nothing", "application/pdf", "broken.pdf", Deadline(60))
