"""The generator's own metrics (its RPC and stage metrics come from services.common)."""

from __future__ import annotations

from opentelemetry import metrics

from services.generator.sources import Answer

_meter = metrics.get_meter(__name__)

tokens = _meter.create_counter(
    "rag.generator.tokens",
    unit="{token}",
    description="LLM tokens as the backend reports them: gen_ai.token.type input (prompt) or output.",
)


def record_usage(answer: Answer) -> None:
    # The extractive backend reports 0 of each: its series exist and stay flat.
    backend = {"backend": answer.backend}
    tokens.add(answer.usage.prompt_tokens, {**backend, "gen_ai.token.type": "input"})
    tokens.add(answer.usage.completion_tokens, {**backend, "gen_ai.token.type": "output"})
