"""Synthetic chunks and queries shaped after SciFact's MiniLM embeddings (see bench/hnsw.py), and their
exact nearest neighbours."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchkit.defaults import EMBEDDING_DIMENSION

TOP_K = 10
SEED = 20240611

# The vectors: calibrated against SciFact with MiniLM.
CHUNKS_PER_DOCUMENT = 10
DOCUMENTS_PER_TOPIC = 20
SPECTRUM_DECAY = 0.8  # the variance of principal direction i falls as i ** -SPECTRUM_DECAY
OFFSET = 0.5  # norm of the shared offset, relative to a topic's
DOCUMENT_SPREAD = 1.0
CHUNK_SPREAD = 0.8
QUERY_SPREAD = 1.6

# The text.
# The commonest English words, commonest first; all in PostgreSQL's English stop list.
STOP_WORDS = [
    *("the", "of", "and", "to", "a", "in", "is", "it", "that", "for", "was", "on", "with", "as"),
    *("be", "at", "by", "this", "are", "from", "or", "an", "have", "not", "but", "which", "were"),
    *("they", "has", "had", "been", "their", "all", "there", "its", "more", "can", "will", "we", "these"),
]
VOCABULARY = 20_000
ZIPF_EXPONENT = 1.0
WORDS_PER_CHUNK = 100
WORDS_PER_QUERY = 12


@dataclass(frozen=True)
class Dataset:
    vectors: npt.NDArray[np.float32]  # (chunks, dimension), unit length; row = document * 10 + chunk
    texts: list[str]
    query_vectors: npt.NDArray[np.float32]
    query_texts: list[str]


def synthesize(chunks: int, queries: int, seed: int = SEED) -> Dataset:
    rng = np.random.default_rng(seed)
    documents = -(-chunks // CHUNKS_PER_DOCUMENT)
    scale = (np.arange(1, EMBEDDING_DIMENSION + 1) ** (-SPECTRUM_DECAY / 2)).astype(np.float32)

    def noise(rows: int) -> npt.NDArray[np.float32]:
        return rng.standard_normal((rows, EMBEDDING_DIMENSION), dtype=np.float32) * scale

    offset = noise(1)[0]
    offset *= OFFSET * float(np.sqrt((scale**2).sum()) / np.linalg.norm(offset))
    topics = noise(max(1, documents // DOCUMENTS_PER_TOPIC))
    popularity = 1 / np.arange(1, len(topics) + 1)
    document_topics = rng.choice(len(topics), documents, p=popularity / popularity.sum())
    centres = topics[document_topics] + DOCUMENT_SPREAD * noise(documents)
    vectors = np.repeat(centres, CHUNKS_PER_DOCUMENT, axis=0)[:chunks] + CHUNK_SPREAD * noise(chunks)
    query_vectors = centres[rng.integers(0, documents, queries)] + QUERY_SPREAD * noise(queries)

    words = _words(rng)
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    frequencies = ranks**-ZIPF_EXPONENT
    frequencies /= frequencies.sum()

    def sentences(count: int, length: int) -> list[str]:
        drawn = rng.choice(len(words), (count, length), p=frequencies)
        return [" ".join(words[i] for i in row) for row in drawn]

    return Dataset(
        _unit(vectors + offset),
        sentences(chunks, WORDS_PER_CHUNK),
        _unit(query_vectors + offset),
        sentences(queries, WORDS_PER_QUERY),
    )


def _unit(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)


def _words(rng: np.random.Generator) -> list[str]:
    """The stop words, then VOCABULARY pseudo-words of 2..4 syllables, in rank order.

    Syllables end in a, i, o or u: the English stemmer leaves such words whole
    (it strips a final e, turns y into i).
    """
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aiou"]
    pseudo: dict[str, None] = {}
    while len(pseudo) < VOCABULARY:
        length = int(rng.integers(2, 5))
        word = "".join(syllables[i] for i in rng.integers(0, len(syllables), length))
        if word not in STOP_WORDS:
            pseudo[word] = None
    return STOP_WORDS + list(pseudo)


def exact_top_k(dataset: Dataset, k: int = TOP_K) -> list[set[int]]:
    """Each query's k nearest rows by cosine similarity, by brute force."""
    similarities = dataset.query_vectors @ dataset.vectors.T
    nearest = np.argpartition(-similarities, k, axis=1)[:, :k]
    return [set(row.tolist()) for row in nearest]


def similarity_profile(dataset: Dataset) -> tuple[float, float]:
    """Mean cosine of a query to its nearest and to its 10th nearest chunk."""
    similarities = dataset.query_vectors @ dataset.vectors.T
    top = -np.partition(-similarities, TOP_K, axis=1)[:, : TOP_K + 1]
    top.sort(axis=1)
    return float(top[:, -1].mean()), float(top[:, -TOP_K].mean())
