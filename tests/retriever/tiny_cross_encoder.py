"""A tiny, randomly initialised BERT cross-encoder, saved to a directory.

No pretrained cross-encoder can be downloaded where the tests run, so they
build this one: it loads and runs through exactly the same code as a real
model, but its scores are noise. Good for plumbing, useless for quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Enough words for the test texts to tokenize to more than [UNK]; any other word becomes [UNK].
WORDS = """
the a an of and to in is are was it this that what how why where when who which
cat cats dog dogs bird fish berlin paris london city population museum river bank money
water sun moon red blue green fast slow big small vector search query document chunk
score model rerank retrieval answer question
"""


def build_tiny_cross_encoder(directory: Path, *, num_labels: int = 1, seed: int = 0) -> Path:
    """Writes tokenizer and weights into `directory` (created if need be) and returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL_TOKENS + WORDS.split()
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # In transformers 5 this is the fast (Rust) tokenizer; BertTokenizerFast is an alias of it.
    tokenizer = transformers.BertTokenizer(vocab_file=str(vocab_file))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    # One label: a regression head giving one relevance logit, as rerankers have.
    config.num_labels = num_labels
    # The same seed gives the same weights, so scores are reproducible across runs.
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
