"""The ONNX engine: exported once from the local weights, the same vectors as torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from services.embedder import onnx_encoder
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel
from services.embedder.tokens import pad
from services.embedder.torch_encoder import TorchEncoder

TEXTS = [
    "Does vitamin D lower the risk of fractures?",
    "Antibiotic resistance spreads between bacteria through plasmids carrying resistance genes.",
    "a",
    "Tables: | id | name |\n| 1 | krill |",
    "word " * 400,  # longer than the model reads
]


def test_onnx_and_torch_give_the_same_vectors(
    model: EmbeddingModel, transformer: SentenceTransformer
) -> None:
    assert model.encoder.backend == "onnx"
    tokenized = model.tokenizer.tokenize(TEXTS)
    onnx_vectors = model.encoder.encode(tokenized)
    torch_vectors = TorchEncoder(transformer).encode(tokenized)

    assert onnx_vectors.shape == (len(TEXTS), model.dimension)
    assert onnx_encoder.agreement(onnx_vectors, torch_vectors) > 0.9999
    np.testing.assert_allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, rtol=1e-5)


def test_the_engine_matches_sentence_transformers_encode(
    model: EmbeddingModel, transformer: SentenceTransformer
) -> None:
    reference = transformer.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)

    ours = model.encoder.encode(model.tokenizer.tokenize(TEXTS))

    assert onnx_encoder.agreement(ours, np.asarray(reference, dtype=np.float32)) > 0.9999


def test_a_batch_gives_each_text_the_vector_it_gets_alone(model: EmbeddingModel) -> None:
    tokenized = model.tokenizer.tokenize(TEXTS)
    together = model.encoder.encode(tokenized)
    alone = np.stack([model.encoder.encode([text])[0] for text in tokenized])

    assert onnx_encoder.agreement(together, alone) > 0.99999, "padding must not change a vector"


def test_the_export_is_made_once_and_reused(model: EmbeddingModel, onnx_cache: Path) -> None:
    (export,) = onnx_cache.glob("*.onnx")
    written = export.stat().st_mtime_ns

    EmbeddingModel.load(EmbedderSettings(onnx_cache_dir=onnx_cache))

    assert list(onnx_cache.glob("*.onnx")) == [export]
    assert export.stat().st_mtime_ns == written


def test_an_export_that_disagrees_with_torch_is_refused(
    model: EmbeddingModel, transformer: SentenceTransformer, onnx_cache: Path
) -> None:
    # No export can beat a cosine of 1 by a margin: the start-up check must refuse it.
    with pytest.raises(RuntimeError, match="disagrees with torch"):
        onnx_encoder.load(
            transformer, model.tokenizer, cache_dir=onnx_cache, intra_op_threads=0, min_cosine=1.001
        )


def test_tokenizing_flags_texts_longer_than_the_model_reads(model: EmbeddingModel) -> None:
    short, long = model.tokenizer.tokenize(["a short text", "word " * 400])

    assert not short.truncated
    assert long.truncated
    assert len(long) == model.max_tokens
    inputs = pad([short, long])
    assert inputs["input_ids"].shape == (2, model.max_tokens)
    assert inputs["attention_mask"][0].sum() == len(short)
