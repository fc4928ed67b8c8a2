"""What a faithfulness judge is asked about a sentence of an answer, and what it rules."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.StrEnum):
    SUPPORTED = "supported"
    NOT_SUPPORTED = "not_supported"
    # The judge's reply said neither (or it failed): counted, never as a pass.
    UNJUDGED = "unjudged"


@dataclass(frozen=True)
class Claim:
    # An answer sentence without its citation markers.
    sentence: str
    # The texts of the sources it cites.
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Judgment:
    verdict: Verdict
    # Why, for the report: the similarity, the judge's reply, or its failure.
    detail: str
