"""A reranker model folder: what it holds, and the checks that tell a servable one from a broken one.

The folder is the contract between the reranker trainer and the retriever:

    <folder>/config.json, model.safetensors, tokenizer files   (CrossEncoder.save_pretrained)
    <folder>/onnx/model.onnx                                    (rerank_export.export_onnx)
    <folder>/onnx/model_int8.onnx                               (the same, quantized; optional)
    <folder>/reranker.json                                      (the trainer's card; its "onnx"
                                                                 field records the export)

Every check here raises RerankModelError with a message naming the folder, the
file and what to do: the retriever logs it and stays NOT_SERVING, the exporter
stops with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ONNX_DIR = "onnx"
DEFAULT_ONNX_FILE = f"{ONNX_DIR}/model.onnx"
QUANTIZED_ONNX_FILE = f"{ONNX_DIR}/model_int8.onnx"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "reranker.json"
# The card's field describing the ONNX export (OnnxExport.to_json()).
CARD_EXPORT_FIELD = "onnx"
# The vocabulary files Hugging Face tokenizers are built from; a folder needs one of them.
# Without any, transformers quietly builds a tokenizer of special tokens only,
# which turns every word into [UNK] and ranks noise: so their absence is an error.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")

_EXPORT_COMMAND = "python -m services.retriever.rerank_export"
_HASH_CHUNK_BYTES = 1 << 20


class RerankModelError(Exception):
    """A reranker model folder that cannot be served; the message says why and what to do."""


def export_hint(folder: Path) -> str:
    return f"export it with `{_EXPORT_COMMAND} {folder}`"


def require_folder(folder: Path) -> Path:
    if not folder.is_dir():
        raise RerankModelError(
            f"no cross-encoder model directory at {folder}; "
            "give an existing local directory or a Hugging Face model name"
        )
    return folder


def require_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise RerankModelError(
            f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save the cross-encoder with its tokenizer (CrossEncoder.save_pretrained)"
        )


def require_single_label(num_labels: int, name: str | Path) -> None:
    if num_labels != 1:
        raise RerankModelError(
            f"{name} has {num_labels} output labels; a reranker needs a model "
            "with a single relevance score (num_labels=1)"
        )


def require_max_length(max_length: int, positions: int | None, name: str | Path) -> None:
    """A pair longer than the model's position table would fail at inference, on the first long passage."""
    if positions is not None and max_length > positions:
        raise RerankModelError(
            f"max_length {max_length} is more than {name} reads ({positions} positions); "
            f"set RETRIEVER_RERANK_MAX_LENGTH to at most {positions}"
        )


def require_relative_onnx_file(onnx_file: str) -> str:
    """An ONNX file named inside the folder: relative, no '..', ending in .onnx."""
    path = Path(onnx_file)
    if path.is_absolute() or ".." in path.parts or path.suffix != ".onnx":
        raise ValueError(
            f"the ONNX file must be a path inside the model folder ending in .onnx, such as "
            f"{DEFAULT_ONNX_FILE} or {QUANTIZED_ONNX_FILE}; got {onnx_file!r}"
        )
    return onnx_file


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_card(folder: Path) -> dict[str, Any]:
    """The folder's reranker.json; empty when there is none (a folder exported by hand)."""
    path = folder / CARD_FILE
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RerankModelError(f"{path} cannot be read as JSON: {error}") from error
    if not isinstance(card, dict):
        raise RerankModelError(f"{path} must hold a JSON object, not {type(card).__name__}")
    return card


def write_card(folder: Path, card: Mapping[str, Any]) -> None:
    """Replaces reranker.json atomically: a reader never sees half a card."""
    write_atomically(folder / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())


def write_atomically(path: Path, content: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as partial:
        partial.write(content)
    # Readable by the retriever's user, as the folder's other files are (a temporary file is owner-only).
    os.chmod(partial.name, 0o644)
    os.replace(partial.name, path)


def exported_sha256(card: Mapping[str, Any], onnx_file: str) -> str | None:
    """The sha256 the export recorded in the card for `onnx_file`; None when it recorded none."""
    export = card.get(CARD_EXPORT_FIELD)
    files = export.get("files") if isinstance(export, dict) else None
    record = files.get(onnx_file) if isinstance(files, dict) else None
    sha256 = record.get("sha256") if isinstance(record, dict) else None
    return sha256 if isinstance(sha256, str) else None
