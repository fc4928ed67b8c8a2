"""A tiny, randomly initialised BERT cross-encoder, saved to a directory.

No pretrained cross-encoder can be downloaded where the tests run, so they
build this one: it loads and runs through exactly the same code as a real
model, but its scores are noise. Good for plumbing, useless for quality.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import transformers
from sentence_transformers import CrossEncoder

from services.retriever.rerank_export import export_onnx
from services.retriever.rerank_folder import write_card

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Enough words for the test texts to tokenize to more than [UNK]; any other word becomes [UNK].
WORDS = """
the a an of and to in is are was it this that what how why where when who which
cat cats dog dogs bird fish berlin paris london city population museum river bank money
water sun moon red blue green fast slow big small vector search query document chunk
score model rerank retrieval answer question
"""


def build_tiny_cross_encoder(
    directory: Path, *, num_labels: int = 1, seed: int = 0, initializer_range: float = 0.02
) -> Path:
    """Writes tokenizer and weights into `directory` (created if need be) and returns it.

    The usual initializer_range (0.02) gives near-equal scores; a larger one spreads them.
    """
    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL_TOKENS + WORDS.split()
    # In transformers 5 this is the fast (Rust) tokenizer; BertTokenizerFast is an alias of it.
    # It takes the vocabulary itself: given only a vocab_file, it would quietly know
    # nothing but the special tokens and read every word as [UNK].
    tokenizer = transformers.BertTokenizer(vocab={token: index for index, token in enumerate(vocab)})
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=initializer_range,
    )
    # One label: a regression head giving one relevance logit, as rerankers have.
    config.num_labels = num_labels
    # The same seed gives the same weights, so scores are reproducible across runs.
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# Spreads the tiny model's scores well apart (see build_tiny_cross_encoder), so
# orders compared across engines are not decided by float rounding.
SPREAD_INITIALIZER_RANGE = 0.2
# What a trainer's card might say; the retriever logs some of it.
CARD = {"base_model": "tiny random BERT", "data": "none: random weights", "validation": {"reranked": 0.0}}


def build_tiny_reranker_folder(
    directory: Path,
    *,
    max_length: int,
    num_labels: int = 1,
    seed: int = 0,
    export: bool = True,
    quantize: bool = False,
) -> Path:
    """A model folder as the reranker trainer writes it, from the tiny cross-encoder.

    Its weights and tokenizer saved by CrossEncoder.save_pretrained, a card in
    reranker.json, and with `export` the checked ONNX export (recorded in the card).
    """
    with tempfile.TemporaryDirectory() as scratch:
        raw = build_tiny_cross_encoder(
            Path(scratch), num_labels=num_labels, seed=seed, initializer_range=SPREAD_INITIALIZER_RANGE
        )
        CrossEncoder(str(raw), device="cpu", max_length=max_length).save_pretrained(str(directory))
    write_card(directory, CARD)
    if export:
        export_onnx(directory, max_length=max_length, quantize=quantize)
    return directory
