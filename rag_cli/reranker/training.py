"""Fine-tunes a cross-encoder on (query, passage, label) pairs with sentence-transformers' trainer, on CPU.

The base is any local Hugging Face (or sentence-transformers) model folder; a
bi-encoder such as the shipped all-MiniLM-L6-v2 is turned into a sequence
classifier with a fresh one-logit head. `layers` keeps only the first layers
of its encoder: fewer layers rank a little worse and run proportionally faster.

Binary cross-entropy on raw logits, the loss the MS MARCO cross-encoders were
trained with; positives are weighted up by the negative-to-positive ratio so
that the few positives are not drowned by the hard negatives. A fixed seed
fixes the order of the data, the head's initialisation and dropout.

The training stack (torch, datasets, accelerate: the `train` extra) is
imported only here, when a model is trained.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rag_cli.reranker.judgments import Pair

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder


@dataclass(frozen=True)
class TrainingSettings:
    """The defaults are what trained best on SciFact's train split on CPU (bench/README.md, "reranker")."""

    # Tokens per (query, passage) pair: the rerank stage's cost grows with it.
    max_length: int = 128
    layers: int | None = None
    epochs: float = 3.0
    batch_size: int = 16
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.1
    seed: int = 13


def load_base(base_model: Path, settings: TrainingSettings) -> CrossEncoder:
    """The base model as a one-logit CrossEncoder on CPU, cut to `settings.layers` encoder layers."""
    from sentence_transformers import CrossEncoder

    if not (base_model / "config.json").is_file():
        raise FileNotFoundError(f"{base_model}: not a Hugging Face model folder (no config.json)")
    model: CrossEncoder = CrossEncoder(
        str(base_model), num_labels=1, max_length=settings.max_length, device="cpu"
    )
    if settings.layers is not None:
        _keep_layers(model.model, settings.layers)
    return model


def _keep_layers(model: object, layers: int) -> None:
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    stack = getattr(encoder, "layer", None)
    if stack is None:
        raise ValueError("--layers works with BERT-like models (an encoder with a list of layers)")
    if not 1 <= layers <= len(stack):
        raise ValueError(f"--layers must be 1..{len(stack)} for this model, got {layers}")
    del stack[layers:]
    model.config.num_hidden_layers = layers  # type: ignore[attr-defined]


def train(model: CrossEncoder, pairs: Sequence[Pair], settings: TrainingSettings) -> None:
    """Trains `model` in place, showing the trainer's progress bar."""
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "training needs the train extra: pip install -e '.[train]' (datasets, accelerate)"
        ) from None
    import torch
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    positives = sum(1 for pair in pairs if pair.label > 0)
    if not positives or positives == len(pairs):
        raise ValueError("training needs both positive and negative pairs")
    torch.manual_seed(settings.seed)
    data = datasets.Dataset.from_dict(
        {
            "query": [pair.query for pair in pairs],
            "passage": [pair.passage for pair in pairs],
            "label": [pair.label for pair in pairs],
        }
    )
    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor((len(pairs) - positives) / positives))
    with tempfile.TemporaryDirectory(prefix="rag-reranker-") as scratch:
        arguments = CrossEncoderTrainingArguments(
            output_dir=scratch,
            num_train_epochs=settings.epochs,
            per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate,
            warmup_steps=settings.warmup_ratio,  # a fraction of the steps, in transformers 5
            seed=settings.seed,
            data_seed=settings.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to="none",
            use_cpu=True,
            dataloader_num_workers=0,
        )
        CrossEncoderTrainer(model=model, args=arguments, train_dataset=data, loss=loss).train()
    if model.model is not None:
        model.model.eval()  # type: ignore[no-untyped-call]


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0))
