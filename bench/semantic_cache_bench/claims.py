"""SciFact's train claims, in the order of qrels/train.tsv, as the answer cache sees them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.answer_cache import normalise_question
from gateway.semantic_cache import MeaningMarkers, meaning_markers
from rag_cli import beir

# Only the train split: the test claims stay unseen by every choice made here.
SPLIT = "train"


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    # As the cache keys it (case and spacing folded) and as its guard reads it.
    normalised: str
    markers: MeaningMarkers


def train_claims(data: Path) -> list[Claim]:
    texts = beir.read_queries(data / "queries.jsonl")
    ids = beir.read_qrels(data / "qrels" / f"{SPLIT}.tsv")
    claims = []
    for claim_id in ids:
        normalised = normalise_question(texts[claim_id])
        claims.append(Claim(claim_id, texts[claim_id], normalised, meaning_markers(normalised)))
    return claims
