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


def hit_line(number: int, hit: retriever_pb2.SearchHit) -> str:
    title = f" — {hit.title}" if hit.title else ""
    return (
        f"[{number}] {hit.document_id}#{hit.chunk_index}{title}  (score {hit.score:.3f})\n"
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
    lines += ["", f"timings: {timings(response.timings)}"]
    return "\n".join(lines)


def search(response: gateway_pb2.SearchResponse) -> str:
    lines = [hit_line(i + 1, hit) for i, hit in enumerate(response.hits)] or ["no results"]
    lines += ["", f"timings: {timings(response.timings)}"]
    return "\n".join(lines)
