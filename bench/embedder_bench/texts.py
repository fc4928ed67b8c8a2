"""The texts the embedder benchmark sends: SciFact's, or generated ones where SciFact is missing."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchkit.output import log
from rag_cli import beir
from rag_cli.beir import CorpusDocument

MIN_DOCUMENT_WORDS = 250
SHORT_WORDS = (5, 20)
SEED = 20261121


@dataclass(frozen=True)
class Texts:
    source: str
    short: list[str]  # distinct, shuffled
    documents: list[CorpusDocument]  # the ones ingested, whose chunks are the chunk texts
    warmup_documents: list[CorpusDocument]


def load_texts(data: Path, documents: int) -> Texts:
    if not (data / "corpus.jsonl").exists():
        log(f"no SciFact corpus in {data}: generating the texts")
        return generated_texts(documents)
    corpus = beir.read_corpus(data / "corpus.jsonl")
    claims = list(beir.read_queries(data / "queries.jsonl").values())
    titles = [document.title for document in corpus]
    sentences = [s for document in corpus for s in re.split(r"(?<=[.!?])\s+", document.text)]
    low, high = SHORT_WORDS
    short = [t.strip() for t in (*claims, *titles, *sentences) if low <= len(t.split()) <= high]
    short = list(dict.fromkeys(short))
    random.Random(SEED).shuffle(short)
    long = [document for document in corpus if len(document.text.split()) >= MIN_DOCUMENT_WORDS]
    return Texts(f"SciFact ({data})", short, long[:documents], long[documents : documents + 2])


def generated_texts(documents: int) -> Texts:
    rng = random.Random(SEED)
    words = [
        *("the", "of", "and", "in", "to", "a", "with", "for", "is", "was", "by", "that", "on", "as"),
        *("from", "at", "were", "are", "patients", "cells", "cell", "study", "protein", "expression"),
        *("effect", "levels", "risk", "treatment", "human", "mice", "disease", "cancer", "increased"),
        *("associated", "gene", "response", "data", "analysis", "results", "clinical", "role", "model"),
        *("function", "growth", "between", "activity", "higher", "lower", "significant", "factor"),
        *("receptor", "blood", "brain", "tissue", "signaling", "pathway", "dose", "trial", "group"),
        *("control", "infection", "immune", "therapy", "mortality", "age", "women", "children", "years"),
    ]

    def sentence(low: int, high: int) -> str:
        text = " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))
        return text[0].upper() + text[1:] + "."

    short = list(dict.fromkeys(sentence(*SHORT_WORDS) for _ in range(30_000)))
    docs = [
        CorpusDocument(f"gen-{i}", sentence(5, 12), " ".join(sentence(8, 24) for _ in range(20)))
        for i in range(documents + 2)
    ]
    return Texts("generated", short, docs[:documents], docs[documents:])


class ShortTexts:
    """Short texts for the service, each once before any repeats."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts
        self.sent = 0

    def __next__(self) -> str:
        text = self._texts[self.sent % len(self._texts)]
        self.sent += 1
        return text

    def __iter__(self) -> Iterator[str]:
        return self
