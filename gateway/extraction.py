"""Reading files for ingest, within limits a hostile file cannot get past.

What a PDF or HTML file costs to parse depends on what is in it, not on its
size: a PDF of a few hundred KiB can hold streams that inflate to gigabytes or
millions of drawing operators. So every such file is parsed in a process of its
own (gateway/extraction_worker.py), which

- is killed at GATEWAY_PARSE_TIMEOUT_S, at the call's deadline if that comes
  first, or when the call is cancelled (the file fails with "parsing took longer
  than ..."; a deadline or a cancellation ends the whole call, as elsewhere);
- may map at most GATEWAY_PARSE_MEMORY_MIB of address space ("parsing needed
  more than ... MiB");
- runs beside at most GATEWAY_MAX_CONCURRENT_PARSES - 1 others, across all calls;
  a file waits for a slot within its call's deadline;
- stops reading at the first page or element past GATEWAY_MAX_DOCUMENT_BYTES of
  text (gateway/formats.py).

The processes are forked by a multiprocessing forkserver: a clean process started
once, without the gateway's gRPC threads (forking a process that has them is
unsafe), with the parsers already imported, so a worker starts in milliseconds.
As with any multiprocessing start method but fork, a program started as a
script must guard its main code with `if __name__ == "__main__"`; `python -m
gateway` has nothing to guard.

Plain text and Markdown are only decoded, which costs what their bytes cost, so
they are read here. Every format has a byte limit, checked before any reading; a
file over it fails that document alone, as an unreadable file does: the request's
other documents are fine, and the message bound already limits what arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, ForkServerProcess

from gateway import extraction_worker
from gateway.concurrency import Deadline
from gateway.config import GatewaySettings
from gateway.extraction_worker import Job, OutOfMemory
from gateway.formats import ExtractedText, ExtractionError, FileFormat, detect, read
from services.common.errors import DeadlineExceeded
from services.common.settings import MiB

_WORKER_FORMATS: frozenset[FileFormat] = frozenset({"pdf", "html"})
_FORMAT_NAMES: Mapping[FileFormat, str] = {
    "pdf": "PDF",
    "html": "HTML",
    "markdown": "text and Markdown",
    "text": "text and Markdown",
}
# How a worker ends at its CPU-time limit (the soft one).
_CPU_LIMIT_EXIT = -signal.SIGXCPU


@dataclass(frozen=True)
class ByteLimit:
    max_bytes: int
    setting: str  # the environment variable that sets it, for the message


@dataclass(frozen=True)
class FileLimits:
    bytes_per_format: Mapping[FileFormat, ByteLimit]
    max_text_bytes: int
    parse_timeout_s: float
    parse_memory_mib: int
    max_concurrent_parses: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> FileLimits:
        def limit(field: str) -> ByteLimit:
            return ByteLimit(getattr(settings, field), settings.variable(field))

        text = limit("max_text_file_bytes")
        return cls(
            bytes_per_format={
                "pdf": limit("max_pdf_bytes"),
                "html": limit("max_html_bytes"),
                "markdown": text,
                "text": text,
            },
            max_text_bytes=settings.max_document_bytes,
            parse_timeout_s=settings.parse_timeout_s,
            parse_memory_mib=settings.parse_memory_mib,
            max_concurrent_parses=settings.max_concurrent_parses,
        )


class FileReader:
    """Turns files into text within FileLimits; one per gateway, shared by its calls."""

    def __init__(self, limits: FileLimits) -> None:
        self._limits = limits
        self._slots = asyncio.Semaphore(limits.max_concurrent_parses)
        self._context: ForkServerContext = multiprocessing.get_context("forkserver")
        # Imported once by the forkserver, so every worker starts with the parsers loaded
        # (and, for a program started as a script, with its main module: else each
        # worker would import it again; `python -m` programs have none to import).
        self._context.set_forkserver_preload(["__main__", extraction_worker.__name__])

    async def read(
        self, content: bytes, content_type: str, filename: str, deadline: Deadline
    ) -> ExtractedText:
        """The file's text; ExtractionError (that document's failure) when it cannot or may not be read.

        DeadlineExceeded when the call's deadline passes first; a cancelled call
        stops its worker before the cancellation goes on.
        """
        file_format, charset = detect(content_type, filename)
        limit = self._limits.bytes_per_format[file_format]
        if len(content) > limit.max_bytes:
            raise ExtractionError(
                f"the file is {len(content)} bytes; {_FORMAT_NAMES[file_format]} files of at most "
                f"{limit.max_bytes} bytes are read ({limit.setting})"
            )
        if file_format not in _WORKER_FORMATS:
            # Decoding a few MiB takes milliseconds, but not on the event loop.
            return await asyncio.to_thread(
                read, file_format, content, charset, max_text_bytes=self._limits.max_text_bytes
            )
        job = Job(
            file_format=file_format,
            content=content,
            charset=charset,
            max_text_bytes=self._limits.max_text_bytes,
            memory_bytes=self._limits.parse_memory_mib * MiB,
            timeout_s=math.ceil(self._limits.parse_timeout_s),
        )
        async with self._slot(deadline):
            return await self._parse(job, deadline)

    @contextlib.asynccontextmanager
    async def _slot(self, deadline: Deadline) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(deadline.remaining()):
                await self._slots.acquire()
        except TimeoutError:
            raise DeadlineExceeded(
                "the request deadline passed while its files waited to be parsed"
            ) from None
        try:
            yield
        finally:
            self._slots.release()

    async def _parse(self, job: Job, deadline: Deadline) -> ExtractedText:
        reader, writer = self._context.Pipe(duplex=False)
        worker = self._context.Process(target=extraction_worker.run, args=(job, writer), daemon=True)
        # Starting blocks on the forkserver (for a while, the first time): in a thread.
        started = asyncio.ensure_future(asyncio.to_thread(worker.start))
        try:
            # Shielded: a worker started for a call cancelled meanwhile must still be stopped.
            await asyncio.shield(started)
            writer.close()  # the worker holds the only write end now: its exit ends the pipe
            payload = await self._output(reader, job, deadline)
        except BaseException:
            await asyncio.shield(_stop(worker, started, writer))
            raise
        finally:
            reader.close()
        return self._extracted(payload, await _exit_status(worker))

    async def _output(self, reader: Connection, job: Job, deadline: Deadline) -> bytes:
        """Everything the worker writes, within the time limit or the deadline, whichever is sooner."""
        remaining = deadline.remaining()
        seconds = min(self._limits.parse_timeout_s, remaining)
        try:
            async with asyncio.timeout(seconds):
                return await _read_to_end(reader, extraction_worker.outcome_limit(job.max_text_bytes))
        except TimeoutError:
            if remaining <= self._limits.parse_timeout_s:
                raise DeadlineExceeded("the request deadline passed while a file was being parsed") from None
            raise self._too_slow() from None

    def _extracted(self, payload: bytes, exitcode: int | None) -> ExtractedText:
        if exitcode == _CPU_LIMIT_EXIT:
            raise self._too_slow()
        if exitcode != 0 or not payload:
            raise ExtractionError(f"the parser stopped before it finished ({_describe_exit(exitcode)})")
        try:
            return extraction_worker.decode(payload)
        except OutOfMemory:
            raise ExtractionError(
                f"parsing needed more than {self._limits.parse_memory_mib} MiB"
                f" ({GatewaySettings.variable('parse_memory_mib')})"
            ) from None

    def _too_slow(self) -> ExtractionError:
        return ExtractionError(
            f"parsing took longer than {self._limits.parse_timeout_s:g} s"
            f" ({GatewaySettings.variable('parse_timeout_s')})"
        )


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


async def _read_to_end(reader: Connection, max_bytes: int) -> bytes:
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), reader)
    try:
        chunks: list[bytes] = []
        size = 0
        while chunk := await stream.read(MiB):
            size += len(chunk)
            if size > max_bytes:
                raise ExtractionError("the parser wrote more than any file's text can take")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        transport.close()


async def _stop(worker: ForkServerProcess, started: asyncio.Future[None], writer: Connection) -> None:
    """Kills the worker, once it has started, and waits until it is gone."""
    await asyncio.wait({started})
    writer.close()
    if started.cancelled() or started.exception() is not None:
        return
    if worker.exitcode is None:  # not yet known to have exited, so its pid is still its own
        worker.kill()
    await _exit_status(worker)


async def _exit_status(worker: ForkServerProcess) -> int | None:
    """The worker's exit status, once it has exited; the event loop goes on meanwhile."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    # The sentinel becomes readable when the forkserver reports the exit status.
    loop.add_reader(worker.sentinel, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(worker.sentinel)
    worker.join()
    exitcode = worker.exitcode
    worker.close()  # its file descriptors now, not when it is collected
    return exitcode
