"""Each claim's own answer, asked through the gateway with the answer cache skipped."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from benchkit.output import log
from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2
from rag_cli.client import gateway_client
from semantic_cache_bench.claims import Claim

CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FreshAnswer:
    """What decides whether another claim's answer would do: the outcome and the documents cited."""

    outcome: str
    cited: frozenset[str]

    @classmethod
    def of(cls, response: gateway_pb2.AskResponse) -> FreshAnswer:
        outcome = generator_pb2.AnswerOutcome.Name(response.outcome).removeprefix("ANSWER_OUTCOME_").lower()
        return cls(outcome, frozenset(s.hit.document_id for s in response.sources if s.cited))


def ask_each(gateway_target: str, namespace: str, claims: Sequence[Claim], clients: int) -> list[FreshAnswer]:
    """Every claim asked once (skip_cache: computed afresh, nothing cached), `clients` at a time."""
    with gateway_client(gateway_target, tls=None, api_key=None, timeout_s=CALL_TIMEOUT_S) as gateway:

        def ask(claim: Claim) -> FreshAnswer:
            return FreshAnswer.of(gateway.ask(namespace, claim.text, skip_cache=True))

        answers: list[FreshAnswer] = []
        with ThreadPoolExecutor(clients) as pool:
            for answer in pool.map(ask, claims):
                answers.append(answer)
                if len(answers) % 100 == 0:
                    log(f"  {len(answers)} of {len(claims)} asked")
    return answers
