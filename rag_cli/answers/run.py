"""Asks every golden question through the gateway, a few at once, as any client would.

Each question is asked with skip_cache, so an answer cached by an earlier run (or an earlier item
with the same question) does not stand in for the work being measured. The first failed call (a
RagError) ends the run: the golden set was checked before anything was asked, so a failure is the
system's (down, overloaded, a key without the namespace), and scoring around it would mislead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2
from rag_cli import eval as evaluation
from rag_cli.answers.golden import GoldenItem
from rag_client import AsyncRagClient
from services.generator.sources import Source

# The client-side duration of each Ask, beside the gateway's own stages.
TOTAL = "total"


@dataclass(frozen=True)
class Asked:
    """One golden item and what its Ask returned, as the metrics read it."""

    item: GoldenItem
    answered: bool
    answer: str
    # The sources the answer was written from, best first, numbered as its [n] markers number them.
    sources: tuple[Source, ...]
    # The numbers of the sources the answer cites.
    cited: frozenset[int]
    # Stage -> milliseconds (the gateway's timings), and TOTAL as the client measured it.
    timings_ms: dict[str, float]
    prompt_tokens: int
    completion_tokens: int

    def cited_sources(self) -> list[Source]:
        return [source for source in self.sources if source.number in self.cited]


def asked(item: GoldenItem, response: gateway_pb2.AskResponse, total_ms: float) -> Asked:
    sources = tuple(
        Source(
            number=source.number,
            document_id=source.hit.document_id,
            chunk_index=source.hit.chunk_index,
            title=source.hit.title,
            text=source.hit.text,
            score=source.hit.score,
        )
        for source in response.sources
    )
    return Asked(
        item=item,
        answered=response.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED,
        answer=response.answer,
        sources=sources,
        cited=frozenset(source.number for source in response.sources if source.cited),
        timings_ms={**evaluation.stage_durations(response.timings), TOTAL: total_ms},
        prompt_tokens=response.usage.prompt_tokens,
        completion_tokens=response.usage.completion_tokens,
    )


async def ask_all(
    client: AsyncRagClient,
    items: Sequence[GoldenItem],
    retrieval: gateway_pb2.RetrievalOptions,
    concurrency: int,
    on_asked: Callable[[], object] = lambda: None,
) -> list[Asked]:
    """Every item's answer, in item order; `concurrency` Ask calls in flight."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    results: dict[int, Asked] = {}
    # One iterator shared by the askers: each takes the next item when its call is done.
    numbered = enumerate(items)

    async def asker() -> None:
        for index, item in numbered:
            started = time.perf_counter()
            response = await client.ask(item.namespace, item.question, retrieval=retrieval, skip_cache=True)
            results[index] = asked(item, response, (time.perf_counter() - started) * 1000)
            on_asked()

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(items))):
                group.create_task(asker())
    except ExceptionGroup as failed:
        # The first failure is the cause; the others, if any, its echoes (bulk.send_batches does the same).
        first = failed.exceptions[0]
        raise first from first.__cause__
    return [results[index] for index in range(len(items))]
