"""How long each part of the query-path benchmark runs, and what the stack under test runs with."""

from __future__ import annotations

from dataclasses import dataclass

# The defaults, with every cache off so each search does its whole work, and room for 32
# closed-loop callers (the gateway admits 20 calls at once by default and refuses the rest; its
# gRPC server takes 32, some kept for health probes).
STACK_ENV = {
    "EMBEDDER_CACHE_SIZE": "0",
    "GATEWAY_ANSWER_CACHE_SIZE": "0",
    "GATEWAY_MAX_IN_FLIGHT": "64",
    "GATEWAY_MAX_CONCURRENT_RPCS": "72",
}
NAMESPACE = "bench-search"
TOP_K = 10
CLIENT_LEVELS = (1, 8, 32)


@dataclass(frozen=True)
class Settings:
    """The lengths of a run; the defaults make the full run."""

    rounds: int = 3  # of each path at each level, the paths taking turns
    round_s: float = 2.0  # measured seconds of a round, after round_warmup_s
    round_warmup_s: float = 0.4
    asks: int = 150  # Ask and Search one after the other, one client


FULL = Settings()
QUICK = Settings(rounds=1, round_s=1.0, round_warmup_s=0.3, asks=40)
