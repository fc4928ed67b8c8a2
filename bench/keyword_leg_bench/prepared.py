"""The corpus chunked as the gateway has the embedder chunk it, and embedded with the shipped model,
cached on disk so the model runs once."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchkit.defaults import CHUNK_OVERLAP, CHUNK_TOKENS
from keyword_leg_bench.corpus import Corpus

EMBED_BATCH = 64

# (document id, chunk index, text, start_char, end_char)
Chunk = tuple[str, int, str, int, int]


@dataclass(frozen=True)
class Prepared:
    chunks: list[Chunk]  # in corpus order
    chunk_vectors: npt.NDArray[np.float32]
    query_ids: list[str]
    query_vectors: npt.NDArray[np.float32]


def prepare(corpus: Corpus, cache: Path) -> Prepared:
    """Chunks and embeddings of the corpus and the queries, from the cache when it has them."""
    # Imported here: loading the model's code is slow, and a cached run does not need it.
    from services.embedder.model import default_model_path

    model_path = default_model_path()
    key = hashlib.sha256(
        f"{model_path}|{CHUNK_TOKENS}|{CHUNK_OVERLAP}|{len(corpus.texts)}|{len(corpus.queries)}".encode()
    ).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    chunks_file = cache / f"chunks-{key}.json"
    chunk_vectors_file = cache / f"chunk-vectors-{key}.npy"
    query_vectors_file = cache / f"query-vectors-{key}.npy"
    query_ids = list(corpus.queries)
    if chunks_file.exists() and chunk_vectors_file.exists() and query_vectors_file.exists():
        chunks = [(d, int(i), t, int(s), int(e)) for d, i, t, s, e in json.loads(chunks_file.read_text())]
        return Prepared(chunks, np.load(chunk_vectors_file), query_ids, np.load(query_vectors_file))

    chunks = _chunk(corpus, model_path)
    print(f"embedding {len(chunks)} chunks and {len(query_ids)} queries (cached in {cache}) ...", flush=True)
    started = time.perf_counter()
    chunk_vectors, query_vectors = _embed(model_path, [c[2] for c in chunks], list(corpus.queries.values()))
    print(f"embedded in {time.perf_counter() - started:.0f} s", flush=True)
    np.save(chunk_vectors_file, chunk_vectors)
    np.save(query_vectors_file, query_vectors)
    chunks_file.write_text(json.dumps(chunks))
    return Prepared(chunks, chunk_vectors, query_ids, query_vectors)


def _chunk(corpus: Corpus, model_path: str) -> list[Chunk]:
    """Each document's text split as the embedder's Chunk call splits it with the gateway's defaults."""
    from transformers import AutoTokenizer

    from services.embedder.chunking import TokenChunker

    chunker = TokenChunker(AutoTokenizer.from_pretrained(model_path))
    return [
        (document_id, index, chunk.text, chunk.start_char, chunk.end_char)
        for document_id, text in corpus.texts.items()
        for index, chunk in enumerate(chunker.split(text, CHUNK_TOKENS, CHUNK_OVERLAP))
    ]


def _embed(
    model_path: str, chunks: list[str], queries: list[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    return _encode(model, chunks), _encode(model, queries)


def _encode(model: Any, texts: list[str]) -> npt.NDArray[np.float32]:
    vectors = model.encode(
        texts,
        batch_size=EMBED_BATCH,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)
