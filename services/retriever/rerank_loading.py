"""From the retriever's rerank settings to a loaded Reranker that knows which model it serves."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from services.retriever.limits import DEFAULT_RERANK_MAX_LENGTH
from services.retriever.rerank import DEFAULT_BATCH_SIZE, PairScorer, Reranker, RerankerIdentity
from services.retriever.rerank_folder import (
    CARD_EXPORT_FIELD,
    DEFAULT_ONNX_FILE,
    WEIGHTS_FILE,
    RerankModelError,
    export_hint,
    exported_sha256,
    read_card,
    require_folder,
    require_tokenizer_files,
    sha256_of,
)

log = logging.getLogger(__name__)

RerankBackend = Literal["onnx", "torch"]
RERANK_BACKENDS: tuple[RerankBackend, ...] = ("onnx", "torch")
DEFAULT_RERANK_BACKEND: RerankBackend = "onnx"


def load_reranker(
    name_or_path: str,
    *,
    backend: RerankBackend = DEFAULT_RERANK_BACKEND,
    onnx_file: str = DEFAULT_ONNX_FILE,
    device: str = "cpu",
    max_length: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    intra_op_threads: int = 0,
) -> Reranker:
    """Loads and checks the rerank model; blocking, so call it in a thread.

    The ONNX backend serves `onnx_file` of a local model folder; the torch
    backend a folder or a Hugging Face model name. `max_length` (tokens per
    pair) defaults to what the model was trained and exported at, as its card
    says, else DEFAULT_RERANK_MAX_LENGTH. Raises RerankModelError when the
    model cannot be served, saying why.
    """
    folder = _local_folder(name_or_path)
    card = read_card(folder) if folder is not None else {}
    if max_length is None:
        max_length = trained_max_length(card)
    scorer: PairScorer
    if backend == "onnx":
        if folder is None:
            raise RerankModelError(
                f"{name_or_path!r} is not a local model folder; the onnx backend serves a folder with "
                "an ONNX export: give its path, or set RETRIEVER_RERANK_BACKEND=torch for a Hugging Face name"
            )
        from services.retriever.rerank_onnx import load_onnx_cross_encoder

        scorer = load_onnx_cross_encoder(
            folder, max_length=max_length, onnx_file=onnx_file, intra_op_threads=intra_op_threads
        )
        served_file, sha256 = onnx_file, sha256_of(folder / onnx_file)
        _require_the_exported_file(folder, onnx_file, sha256, card)
    else:
        if folder is not None:
            require_tokenizer_files(folder)
        from services.retriever.rerank_torch import load_torch_cross_encoder

        scorer = load_torch_cross_encoder(str(folder or name_or_path), max_length=max_length, device=device)
        served_file, sha256 = WEIGHTS_FILE, _weights_sha256(folder, name_or_path)
    identity = RerankerIdentity(
        model=str(folder or name_or_path),
        backend=backend,
        file=served_file,
        sha256=sha256,
        max_length=max_length,
        card=card,
    )
    return Reranker(scorer, identity, batch_size=batch_size)


def trained_max_length(card: dict[str, Any]) -> int:
    """The tokens per pair the card's model was exported at (and trained at), else the default."""
    export = card.get(CARD_EXPORT_FIELD)
    exported = export.get("max_length") if isinstance(export, dict) else None
    return exported if isinstance(exported, int) and exported > 0 else DEFAULT_RERANK_MAX_LENGTH


def _local_folder(name_or_path: str) -> Path | None:
    """The model's folder; None for a Hugging Face model name."""
    path = Path(name_or_path).expanduser()
    # Something that can only be a path must exist: otherwise it would be
    # taken for a model name and looked up on the Hub, failing much later
    # (or after network retries) with a message that hides the typo.
    if path.is_absolute() or name_or_path.startswith((".", "~")):
        return require_folder(path)
    return path if path.is_dir() else None


def _require_the_exported_file(folder: Path, onnx_file: str, sha256: str, card: dict[str, Any]) -> None:
    """An ONNX file other than the one the export checked against torch is not served."""
    recorded = exported_sha256(card, onnx_file)
    if recorded is None:
        log.warning(
            "%s: reranker.json records no export of %s, so nothing shows it was checked against torch",
            folder,
            onnx_file,
        )
    elif recorded != sha256:
        raise RerankModelError(
            f"{folder / onnx_file} is not the file that was exported and checked (sha256 {sha256[:12]}..., "
            f"reranker.json records {recorded[:12]}...); {export_hint(folder)}"
        )


def _weights_sha256(folder: Path | None, name: str) -> str:
    if folder is not None:
        weights = folder / WEIGHTS_FILE
        return sha256_of(weights) if weights.is_file() else ""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, WEIGHTS_FILE)
    return sha256_of(Path(cached)) if isinstance(cached, str) else ""


def describe(identity: RerankerIdentity) -> str:
    """One log line's worth: which model, how it is run, and what the trainer's card says of it."""
    facts = [
        f"model={identity.model}",
        f"backend={identity.backend}",
        f"file={identity.file}",
        f"sha256={identity.sha256 or 'unknown'}",
        f"max_length={identity.max_length}",
    ]
    facts += [
        f"card.{key}={json.dumps(value, separators=(',', ':'))}"
        for key, value in identity.card.items()
        if key in _CARD_FIELDS_LOGGED
    ]
    return " ".join(facts)


# The card's fields worth a start-up log line (the rest is in the folder).
_CARD_FIELDS_LOGGED = ("base_model", "data", "namespace", "validation")
