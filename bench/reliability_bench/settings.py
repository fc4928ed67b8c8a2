"""How long each phase of the reliability benchmark runs, and what the stack under test runs with."""

from __future__ import annotations

from dataclasses import dataclass

# Defaults, but no embedding cache: the ingests of phase 4 send the same texts again.
SERVICE_ENV = {"EMBEDDER_CACHE_SIZE": "0"}


@dataclass(frozen=True)
class Settings:
    """The lengths of a run; the defaults make the full run."""

    load_s: float = 60.0
    kill_window_s: float = 12.0
    documents: int = 1000
    overload_s: float = 30.0
    caps_s: float = 30.0


FULL = Settings()
QUICK = Settings(load_s=15.0, kill_window_s=9.0, documents=200, overload_s=10.0, caps_s=10.0)
