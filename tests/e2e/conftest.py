"""Fixtures shared by the end-to-end tests (the stack itself is in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from rag_cli.stack import Stack

ChunkReader = Callable[[str], dict[str, list[str]]]


@pytest.fixture
def stored_chunks(stack: Stack) -> ChunkReader:
    """Reads the chunk table directly, to see what ingest really wrote."""
    database_url = stack.database_url_in_use

    def read(namespace: str) -> dict[str, list[str]]:
        async def query() -> dict[str, list[str]]:
            connection = await asyncpg.connect(database_url)
            try:
                rows = await connection.fetch(
                    "SELECT document_id, text FROM rag_chunks WHERE namespace = $1"
                    " ORDER BY document_id, chunk_index",
                    namespace,
                )
            finally:
                await connection.close()
            chunks: dict[str, list[str]] = {}
            for row in rows:
                chunks.setdefault(row["document_id"], []).append(row["text"])
            return chunks

        return asyncio.run(query())

    return read


CORPUS = [
    ("volcano", "Volcanoes", "Magma rises through the crust and erupts as lava, ash and volcanic gas."),
    ("sourdough", "Sourdough bread", "A sourdough starter of flour and water ferments wild yeast."),
    ("chess", "Chess openings", "The Sicilian Defence answers 1.e4 with c5 and leads to sharp games."),
    ("tides", "Ocean tides", "The gravitational pull of the Moon and the Sun raises the tides twice a day."),
    ("bees", "Honey bees", "Worker bees collect nectar from flowers and turn it into honey in the hive."),
    ("guitar", "Guitar tuning", "Standard tuning sets the six guitar strings to E, A, D, G, B and E."),
    ("blank", "Nothing here", "   "),
]
QUERIES = {
    "q-lava": "What comes out of a volcano when it erupts?",
    "q-bread": "How does a starter make bread rise?",
    "q-moon": "Why does the sea level rise and fall each day?",
    "q-honey": "How do bees make honey?",
    "q-unjudged": "Which chess opening starts with c5?",  # judged only with score 0 below
}
QRELS = [
    ("q-lava", "volcano", 2),
    ("q-bread", "sourdough", 1),
    ("q-moon", "tides", 2),
    ("q-moon", "volcano", 0),
    ("q-honey", "bees", 1),
    ("q-unjudged", "chess", 0),
]


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """A tiny BEIR dataset: corpus, queries and test qrels, some judged irrelevant."""
    folder = tmp_path / "tiny-BEIR set"
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": i, "title": title, "text": text} for i, title, text in CORPUS]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    queries = [{"_id": i, "text": text} for i, text in QUERIES.items()]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    qrels = "".join(f"{q}\t{d}\t{score}\n" for q, d, score in QRELS)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return folder
