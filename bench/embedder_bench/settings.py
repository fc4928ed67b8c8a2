"""How long each part of the embedder benchmark runs, and what the services under test run with."""

from __future__ import annotations

from dataclasses import dataclass

# What every service under test runs with: the defaults, but no embedding cache.
SERVICE_ENV = {"EMBEDDER_CACHE_SIZE": "0"}


@dataclass(frozen=True)
class Settings:
    """The lengths of a run; the defaults make the full run."""

    sweep_rounds: int = 3  # rounds through the engines and batch sizes of the ceiling table
    sweep_slice_s: float = 1.0  # per engine and batch size, per round
    slice_s: float = 1.5  # a slice of the ceiling between two rounds of a service figure
    rounds: int = 4  # of each closed-loop level and of the stream
    round_s: float = 2.0  # measured time of a closed-loop round, after round_warmup_s
    round_warmup_s: float = 0.5
    single_queries: int = 300
    documents: int = 150


FULL = Settings()
QUICK = Settings(
    sweep_rounds=1,
    sweep_slice_s=0.5,
    slice_s=0.5,
    rounds=2,
    round_s=1.0,
    round_warmup_s=0.3,
    single_queries=60,
    documents=50,
)
