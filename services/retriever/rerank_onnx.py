"""The rerank model served by ONNX Runtime from a model folder's onnx/ export.

ONNX Runtime runs a small cross-encoder several times faster than torch on CPU
and needs none of the training stack at serving time. The folder's own
tokenizer turns (query, passage) pairs into the graph's inputs exactly as the
CrossEncoder does (pairs, longest-first truncation to max_length), so scores
match the torch model's to float rounding; rerank_export.py proves that for
every export before it is written.

load_onnx_cross_encoder() is also what the reranker trainer uses to score
pairs in-process, so it measures the model as the retriever will run it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from transformers import AutoConfig, AutoTokenizer

from services.common.onnx_options import session_options
from services.retriever.rerank import DEFAULT_BATCH_SIZE, Pair, score_in_batches
from services.retriever.rerank_folder import (
    DEFAULT_ONNX_FILE,
    RerankModelError,
    export_hint,
    require_folder,
    require_max_length,
    require_single_label,
    require_tokenizer_files,
)

log = logging.getLogger(__name__)

OUTPUT_NAME = "logits"


class OnnxCrossEncoder:
    """A cross-encoder's ONNX graph with its tokenizer; scores pairs synchronously."""

    backend = "onnx"

    def __init__(self, session: ort.InferenceSession, tokenizer: Any, *, max_length: int) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self.max_length = max_length
        self._input_names = [graph_input.name for graph_input in session.get_inputs()]

    def predict(self, pairs: Sequence[Pair]) -> list[float]:
        """One raw logit per pair, in input order: one forward pass over all of them."""
        if not pairs:
            return []
        inputs = self._tokenizer(
            [query for query, _ in pairs],
            [passage for _, passage in pairs],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="np",
        )
        feed = {name: np.asarray(inputs[name], dtype=np.int64) for name in self._input_names}
        (logits,) = self._session.run([OUTPUT_NAME], feed)
        return np.asarray(logits, dtype=np.float32).reshape(-1).tolist()

    def score(self, pairs: Sequence[Pair], *, batch_size: int = DEFAULT_BATCH_SIZE) -> list[float]:
        """One raw logit per pair, in input order, batched by length as the retriever batches them."""
        scores = score_in_batches(self, pairs, batch_size)
        assert scores is not None  # nothing stops it early
        return scores


def load_onnx_cross_encoder(
    folder: Path,
    *,
    max_length: int,
    onnx_file: str = DEFAULT_ONNX_FILE,
    intra_op_threads: int = 0,
) -> OnnxCrossEncoder:
    """The folder's ONNX reranker, checked to be servable; blocking, so call it in a thread.

    `intra_op_threads` is the threads one forward pass uses (0: every core).
    Raises RerankModelError when the folder cannot be served as it is.
    """
    require_folder(folder)
    require_tokenizer_files(folder)
    config = load_config(folder)
    require_single_label(int(config.num_labels), folder)
    require_max_length(max_length, getattr(config, "max_position_embeddings", None), folder)
    path = folder / onnx_file
    if not path.is_file():
        raise RerankModelError(f"{folder} has no ONNX model at {onnx_file}; {export_hint(folder)}")
    try:
        session = open_session(path, intra_op_threads=intra_op_threads)
    except RerankModelError as error:
        raise RerankModelError(f"{error}; {export_hint(folder)}") from error
    _require_one_logit(session, path, folder)
    tokenizer = load_tokenizer(folder)
    encoder = OnnxCrossEncoder(session, tokenizer, max_length=max_length)
    _require_inputs_from_tokenizer(encoder, session, tokenizer, path)
    return encoder


def open_session(path: Path, *, intra_op_threads: int = 0) -> ort.InferenceSession:
    options = session_options(intra_op_threads=intra_op_threads)
    # One call at a time (the reranker's single worker): threads between
    # operators would only compete with those inside them.
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own unrelated types (InvalidProtobuf, Fail, ...)
        raise RerankModelError(
            f"{path} is not a loadable ONNX model ({type(error).__name__}: {_first_line(error)})"
        ) from error


def load_config(folder: Path) -> Any:
    """The folder's model config (config.json), read without the network."""
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:  # transformers raises OSError, ValueError or KeyError here
        raise RerankModelError(
            f"{folder} has no readable model config (config.json): {_first_line(error)}"
        ) from error


def load_tokenizer(folder: Path) -> Any:
    """The folder's own tokenizer, as the ONNX engine uses it (check require_tokenizer_files first)."""
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:
        raise RerankModelError(f"the tokenizer in {folder} cannot be loaded: {_first_line(error)}") from error


def _require_one_logit(session: ort.InferenceSession, path: Path, folder: Path) -> None:
    outputs = {output.name: output.shape for output in session.get_outputs()}
    shape = outputs.get(OUTPUT_NAME)
    if shape is None:
        raise RerankModelError(
            f"{path} has no '{OUTPUT_NAME}' output (it has {', '.join(outputs) or 'none'}); "
            f"{export_hint(folder)}"
        )
    if len(shape) != 2 or shape[1] != 1:
        raise RerankModelError(
            f"{path} gives logits of shape {shape}; a reranker needs one relevance score per pair "
            "([batch, 1], num_labels=1)"
        )


def _require_inputs_from_tokenizer(
    encoder: OnnxCrossEncoder, session: ort.InferenceSession, tokenizer: Any, path: Path
) -> None:
    """The graph's inputs must be ones the tokenizer gives, or every call would fail; one pass proves it."""
    given = set(tokenizer("a query", "a passage"))
    missing = [graph_input.name for graph_input in session.get_inputs() if graph_input.name not in given]
    if missing:
        raise RerankModelError(
            f"{path} takes {', '.join(missing)}, which the folder's tokenizer does not give; "
            "the ONNX model and the tokenizer do not belong together"
        )
    try:
        encoder.predict([("a query", "a passage")])
    except Exception as error:
        raise RerankModelError(f"{path} fails on a test pair: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]
