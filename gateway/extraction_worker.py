"""The process that reads one PDF or HTML file; gateway/extraction.py starts one per file.

Before it reads, the process limits itself: its address space (RLIMIT_AS, so an
allocation past the limit fails and Python raises MemoryError) and its CPU time
(RLIMIT_CPU: the gateway kills the worker at the time limit; this ends it too if
the gateway is gone). It writes one outcome to its pipe as JSON and exits. JSON,
not pickle: what comes back from a process that parsed a hostile file is data.
"""

from __future__ import annotations

import json
import logging
import resource
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from gateway import formats

log = logging.getLogger(__name__)

# The CPU-time backstop lets the gateway's own kill at the time limit come first.
CPU_GRACE_S = 2


@dataclass(frozen=True)
class Job:
    file_format: formats.FileFormat
    content: bytes
    charset: str | None
    max_text_bytes: int
    memory_bytes: int
    # The gateway's time limit, in whole seconds (rounded up).
    timeout_s: int


def run(job: Job, output: Connection) -> None:
    """The worker's whole life: limits, parsing, one outcome on `output`."""
    logging.basicConfig(format="%(levelname)s %(name)s [file worker %(process)d] %(message)s")
    resource.setrlimit(resource.RLIMIT_AS, (job.memory_bytes, job.memory_bytes))
    # Past the soft limit the kernel sends SIGXCPU, which ends the process.
    cpu_seconds = job.timeout_s + CPU_GRACE_S
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + CPU_GRACE_S))
    payload = json.dumps(_outcome(job), ensure_ascii=False).encode()
    with open(output.fileno(), "wb", closefd=False) as stream:
        stream.write(payload)


def _outcome(job: Job) -> dict[str, Any]:
    try:
        extracted = formats.read(job.file_format, job.content, job.charset, max_text_bytes=job.max_text_bytes)
    except formats.ExtractionError as error:
        return {"error": str(error)}
    except MemoryError:
        # By now the exception has unwound what filled the memory.
        return {"out_of_memory": True}
    except Exception as error:
        # A parser bug or a file it chokes on: that file's failure, not the request's.
        log.exception("the parser failed")
        return {"error": f"the file could not be parsed ({type(error).__name__})"}
    return {"text": extracted.text, "title": extracted.title, "page_starts": list(extracted.page_starts)}


class OutOfMemory(Exception):
    """The worker needed more address space than it was given."""


def outcome_limit(max_text_bytes: int) -> int:
    """The most bytes an outcome can take: the text and title as JSON (a control
    character takes six bytes, \\u0001), page offsets and the keys."""
    return 6 * (max_text_bytes + formats.MAX_TITLE_CHARS) + 12 * formats.MAX_PDF_PAGES + 1024


def decode(payload: bytes) -> formats.ExtractedText:
    """The worker's outcome: the text, or ExtractionError with the file's fault, or OutOfMemory."""
    outcome = json.loads(payload)
    if outcome.get("out_of_memory"):
        raise OutOfMemory
    if "error" in outcome:
        raise formats.ExtractionError(str(outcome["error"]))
    return formats.ExtractedText(
        text=str(outcome["text"]),
        title=str(outcome["title"]),
        page_starts=tuple(int(start) for start in outcome["page_starts"]),
    )
