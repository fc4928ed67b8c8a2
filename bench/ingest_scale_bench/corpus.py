"""The documents every configuration ingests: SciFact abstracts, or the repository's samples without it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchkit.output import log
from rag.gateway.v1 import gateway_pb2
from rag_cli import beir

# Abstracts this long make three or four chunks each (200 tokens, 40 overlap): a stream's worth per call.
MIN_WORDS = 250
SAMPLES = Path(__file__).resolve().parents[2] / "samples"
WARMUP_DOCUMENTS = 4


@dataclass(frozen=True)
class Corpus:
    source: str
    documents: list[gateway_pb2.Document]  # ingested by every round
    warmup: list[gateway_pb2.Document]  # ingested once per gateway, untimed


def load_corpus(data: Path, documents: int) -> Corpus:
    wanted = documents + WARMUP_DOCUMENTS
    if (data / "corpus.jsonl").exists():
        corpus = beir.read_corpus(data / "corpus.jsonl")
        long = [d for d in corpus if len(d.text.split()) >= MIN_WORDS][:wanted]
        made = [gateway_pb2.Document(id=d.id, title=d.title, text=d.text) for d in long]
        source = f"SciFact ({data}), abstracts of {MIN_WORDS} words or more"
    else:
        log(f"no SciFact corpus in {data}: ingesting copies of {SAMPLES}")
        files = sorted(p for p in SAMPLES.iterdir() if p.suffix in {".md", ".txt"})
        made = [
            gateway_pb2.Document(
                id=f"{i}-{files[i % len(files)].name}", text=files[i % len(files)].read_text()
            )
            for i in range(wanted)
        ]
        source = f"copies of the {len(files)} samples ({SAMPLES})"
    if len(made) < wanted:
        raise SystemExit(f"{source}: {len(made)} documents, {wanted} needed")
    return Corpus(source, made[:documents], made[documents:])
