"""Short synthetic documents and queries, from a small scientific vocabulary."""

from __future__ import annotations

import random

from rag.gateway.v1 import gateway_pb2

WORDS = [
    *("protein", "cell", "gene", "expression", "tumor", "immune", "receptor", "signal", "pathway"),
    *("mouse", "human", "clinical", "trial", "patients", "therapy", "dose", "risk", "cohort"),
    *("analysis", "model", "network", "energy", "climate", "carbon", "soil", "water", "river"),
    *("ocean", "ice", "temperature", "pressure", "material", "crystal", "surface", "catalyst"),
    *("reaction", "polymer", "battery", "light", "laser", "quantum", "electron", "magnetic"),
    *("field", "spin", "graph", "algorithm", "data", "learning", "memory", "neuron", "brain"),
]


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def text(rng: random.Random, length: int) -> str:
    """Sentences of 6 to 16 words, `length` words in all."""
    sentences = []
    left = length
    while left > 0:
        n = min(left, rng.randint(6, 16))
        sentences.append(words(rng, n).capitalize() + ".")
        left -= n
    return " ".join(sentences)


def documents(prefix: str, count: int, seed: int) -> list[gateway_pb2.Document]:
    """Short documents, most of one chunk, one in five of two or three (200-token chunks)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        length = rng.randint(200, 380) if rng.random() < 0.2 else rng.randint(15, 60)
        out.append(gateway_pb2.Document(id=f"{prefix}-{i:05d}", title=f"Doc {i}", text=text(rng, length)))
    return out
