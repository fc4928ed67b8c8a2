"""Plain-text rendering of gateway responses for the terminal."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2
from rag.retriever.v1 import retriever_pb2


def upsert_status(status: retriever_pb2.UpsertStatus.ValueType) -> str:
    """ "created", "updated" or "unchanged"."""
    return retriever_pb2.UpsertStatus.Name(status).removeprefix("UPSERT_STATUS_").lower()


def snippet(text: str, width: int = 160) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" …")


def timings(stages: Sequence[common_pb2.StageTiming]) -> str:
    return "  ".join(f"{t.stage} {t.duration_ms:.0f} ms" for t in stages)


def pages(numbers: Sequence[int]) -> str:
    """ "p. 3", "pp. 3-4", or "" for a source without pages."""
    if not numbers:
        return ""
    if len(numbers) == 1:
        return f"p. {numbers[0]}"
    return f"pp. {numbers[0]}-{numbers[-1]}"


def hit_line(number: int, hit: retriever_pb2.SearchHit) -> str:
    title = f" — {hit.title}" if hit.title else ""
    where = f", {pages(hit.pages)}" if hit.pages else ""
    return (
        f"[{number}] {hit.document_id}#{hit.chunk_index}{title}{where}  (score {hit.score:.3f})\n"
        f"    {snippet(hit.text)}"
    )


def answer(response: gateway_pb2.AskResponse) -> str:
    return response.answer.strip() + "\n\n" + answer_details(response)


def answer_details(response: gateway_pb2.AskResponse) -> str:
    """Everything shown after the answer text: outcome, sources, timings."""
    lines = []
    if response.outcome == generator_pb2.ANSWER_OUTCOME_NO_ANSWER:
        lines += ["(the sources do not contain the answer)", ""]
    lines.append("Sources:")
    lines += [hit_line(s.number, s.hit) + ("" if s.cited else "  (not cited)") for s in response.sources]
    cached = "  (cached answer)" if response.cached else ""
    lines += ["", f"timings: {timings(response.timings)}{cached}"]
    return "\n".join(lines)


def document_line(document: retriever_pb2.DocumentInfo) -> str:
    """id, title, chunks, when stored, content hash; and why its last ingestion failed, if it did."""
    stored = (
        f"{document.chunk_count} chunks  {document.updated_at.ToDatetime():%Y-%m-%d %H:%M:%S} UTC  "
        f"{document.content_hash[:12]}"
        if document.HasField("updated_at")
        else "not stored"
    )
    title = f"  {snippet(document.title, 60)}" if document.title else ""
    line = f"{document.document_id}{title}  {stored}"
    if document.HasField("failure"):
        failed_at = document.failure.failed_at.ToDatetime()
        line += f"\n    failed {failed_at:%Y-%m-%d %H:%M:%S} UTC: {document.failure.reason}"
    return line


def search(response: gateway_pb2.SearchResponse) -> str:
    lines = [hit_line(i + 1, hit) for i, hit in enumerate(response.hits)] or ["no results"]
    lines += ["", f"timings: {timings(response.timings)}"]
    return "\n".join(lines)
