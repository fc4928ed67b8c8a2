"""A reranker folder's cross-encoder exported to ONNX, proven against torch.

`python -m services.retriever.rerank_export FOLDER [--max-length N] [--quantize]`.

The reranker trainer calls export_onnx() on every model folder it writes; run
it by hand for a cross-encoder saved some other way. The export is checked
against the torch model on fixed probe pairs before it is moved into place, so
a bad export never ships: the retriever serves only what passed (it checks the
file against the sha256 recorded in reranker.json at start-up).

With quantize, onnx/model_int8.onnx is written too (dynamic int8 weights:
about a quarter of the size, faster on most CPUs). Its logits move more than
float rounding, so it is not held to the bound; how far they move, and how
well it keeps the probe pairs' order, are recorded for whoever chooses it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from services.retriever.limits import DEFAULT_RERANK_MAX_LENGTH
from services.retriever.rerank import Pair, PairScorer
from services.retriever.rerank_folder import (
    CARD_EXPORT_FIELD,
    DEFAULT_ONNX_FILE,
    ONNX_DIR,
    QUANTIZED_ONNX_FILE,
    RerankModelError,
    read_card,
    require_folder,
    require_max_length,
    require_single_label,
    require_tokenizer_files,
    sha256_of,
    write_card,
)
from services.retriever.rerank_onnx import (
    OUTPUT_NAME,
    OnnxCrossEncoder,
    load_config,
    load_tokenizer,
    open_session,
)
from services.retriever.rerank_torch import TorchCrossEncoder

log = logging.getLogger(__name__)

OPSET = 17
# The most an exported logit may differ from torch's on any probe pair. Float32
# rounding in a different operator order moves logits by ~1e-6; a wrong graph
# (a baked-in shape, a dropped input) moves them by far more than this.
MAX_ABS_DIFF = 1e-3
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

_LONG_PASSAGE = "The mitochondria is the powerhouse of the cell, and it makes most of its energy. " * 300
# Short and long (beyond any max_length, so truncated), plain and odd, query-heavy and passage-heavy.
PROBE_PAIRS: tuple[Pair, ...] = (
    ("what is the capital of france", "Paris is the capital and largest city of France."),
    ("what is the capital of france", "The cat sat on the mat."),
    ("x", "y"),
    ("how do cells make energy", _LONG_PASSAGE),
    ("Ünïcödé query with emoji 🙂 and 中文", "Ünïcödé, emoji 🙂 and 中文 mixed into one passage."),
    ("GRPC_STATUS=14 UNAVAILABLE: connection refused", "errno 111 at 10.0.0.7:50051 while dialing"),
    ("vitamin d and hip fractures in older adults " * 20, "Vitamin D deficiency raises the risk."),
    ("is the bank by the river", "money in the bank\nand water in the river"),
)


@dataclass(frozen=True)
class ExportedFile:
    # Relative to the model folder.
    file: str
    sha256: str
    size_bytes: int
    # Against torch, on PROBE_PAIRS scored together and one at a time.
    max_abs_diff: float
    # Of the probe pairs' pairs, the share this file orders as torch does (1.0: all).
    order_agreement: float

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "max_abs_diff": self.max_abs_diff,
            "order_agreement": self.order_agreement,
        }


@dataclass(frozen=True)
class OnnxExport:
    folder: Path
    max_length: int
    opset: int
    probe_pairs: int
    max_abs_diff_bound: float
    model: ExportedFile
    quantized: ExportedFile | None

    @property
    def files(self) -> list[ExportedFile]:
        return [self.model] if self.quantized is None else [self.model, self.quantized]

    def to_json(self) -> dict[str, Any]:
        """The record kept in the folder's reranker.json, under "onnx"."""
        return {
            "max_length": self.max_length,
            "opset": self.opset,
            "probe_pairs": self.probe_pairs,
            "max_abs_diff_bound": self.max_abs_diff_bound,
            "files": {exported.file: exported.to_json() for exported in self.files},
        }


def export_onnx(folder: Path, *, max_length: int, quantize: bool = False) -> OnnxExport:
    """Writes onnx/model.onnx (and with quantize onnx/model_int8.onnx) for the CrossEncoder saved in `folder`.

    Loads the model on CPU, exports its sequence classifier (inputs as the
    tokenizer gives them, dynamic batch and token axes, logits [batch, 1]),
    checks it against torch on PROBE_PAIRS truncated at `max_length`, and only
    then moves it into place and records it in reranker.json. Raises
    RerankModelError, writing nothing, when the folder is no single-score
    cross-encoder or the export disagrees with torch by more than MAX_ABS_DIFF.
    """
    require_folder(folder)
    require_tokenizer_files(folder)
    # Read first: a card that cannot be updated must stop the export before anything is written.
    card = read_card(folder)
    model = CrossEncoder(str(folder), device="cpu", max_length=max_length)
    require_single_label(model.num_labels, folder)
    classifier = model.model
    if classifier is None:
        raise RerankModelError(f"{folder} holds no transformers sequence classifier to export")
    classifier.eval()
    require_max_length(max_length, getattr(classifier.config, "max_position_embeddings", None), folder)
    # The tokenizer the retriever will use, so the check covers tokenization too.
    tokenizer = load_tokenizer(folder)
    reference = TorchCrossEncoder(model, name=str(folder))
    expected = np.asarray(reference.predict(PROBE_PAIRS), dtype=np.float64)

    onnx_dir = folder / ONNX_DIR
    onnx_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=onnx_dir, prefix=".export-") as scratch:
        partial = Path(scratch) / Path(DEFAULT_ONNX_FILE).name
        _export_graph(classifier, tokenizer, max_length, partial)
        exported = _measure(partial, DEFAULT_ONNX_FILE, tokenizer, max_length, expected)
        if exported.max_abs_diff > MAX_ABS_DIFF:
            raise RerankModelError(
                f"the ONNX export of {folder} disagrees with torch: logits differ by up to "
                f"{exported.max_abs_diff:.2e} (> {MAX_ABS_DIFF:.0e}) on the probe pairs; nothing was written"
            )
        quantized = None
        if quantize:
            partial_int8 = Path(scratch) / Path(QUANTIZED_ONNX_FILE).name
            _quantize(partial, partial_int8)
            quantized = _measure(partial_int8, QUANTIZED_ONNX_FILE, tokenizer, max_length, expected)
            os.replace(partial_int8, folder / QUANTIZED_ONNX_FILE)
        else:
            # One made from earlier weights would no longer match them.
            (folder / QUANTIZED_ONNX_FILE).unlink(missing_ok=True)
        os.replace(partial, folder / DEFAULT_ONNX_FILE)

    export = OnnxExport(
        folder=folder,
        max_length=max_length,
        opset=OPSET,
        probe_pairs=len(PROBE_PAIRS),
        max_abs_diff_bound=MAX_ABS_DIFF,
        model=exported,
        quantized=quantized,
    )
    card[CARD_EXPORT_FIELD] = export.to_json()
    write_card(folder, card)
    return export


class _Logits(torch.nn.Module):
    """The classifier with positional inputs and its logits as the one output, as the exporter wants it."""

    def __init__(self, classifier: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.classifier = classifier
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        output = self.classifier(**dict(zip(self.input_names, inputs, strict=True)))
        return output.logits  # type: ignore[no-any-return]


def _export_graph(classifier: torch.nn.Module, tokenizer: Any, max_length: int, path: Path) -> None:
    example = tokenizer(
        ["an example query", "a second, longer example query"],
        ["an example passage", "and a passage that is longer than the first one"],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    # The inputs the tokenizer gives, in a fixed order: models without token types take two.
    input_names = [name for name in _INPUT_NAMES if name in example]
    dynamic_axes = {name: {0: "batch", 1: "tokens"} for name in input_names}
    dynamic_axes[OUTPUT_NAME] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns that shape checks inside the attention code become
        # constants; the probe pairs (other batch sizes and lengths) prove the graph right.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(classifier, input_names).eval(),
            tuple(example[name] for name in input_names),
            str(path),
            input_names=input_names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            # The TorchScript exporter: it needs only the onnx package.
            dynamo=False,
        )


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # It logs advice to pre-process the model, which matters for static quantization only.
    quiet = _DropMessages("pre-processing before quantization")
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(quiet)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self._fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self._fragment not in record.getMessage()


def _measure(
    path: Path, file: str, tokenizer: Any, max_length: int, expected: np.ndarray[Any, Any]
) -> ExportedFile:
    """How `path` scores the probe pairs against torch's `expected`: all in one batch, and one at a time."""
    scorer: PairScorer = OnnxCrossEncoder(open_session(path), tokenizer, max_length=max_length)
    together = np.asarray(scorer.predict(PROBE_PAIRS), dtype=np.float64)
    alone = np.asarray([scorer.predict([pair])[0] for pair in PROBE_PAIRS], dtype=np.float64)
    max_abs_diff = float(max(np.abs(together - expected).max(), np.abs(alone - expected).max()))
    return ExportedFile(
        file=file,
        sha256=sha256_of(path),
        size_bytes=path.stat().st_size,
        max_abs_diff=max_abs_diff,
        order_agreement=order_agreement(expected, together),
    )


def order_agreement(
    reference: Sequence[float] | np.ndarray[Any, Any], other: Sequence[float] | np.ndarray[Any, Any]
) -> float:
    """The share of pairs (i, j) that `other` orders as `reference` does (ties agree only with ties)."""
    first, second = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    upper = np.triu_indices(len(first), k=1)
    if not len(upper[0]):
        return 1.0
    first_signs = np.sign(first[:, None] - first[None, :])[upper]
    second_signs = np.sign(second[:, None] - second[None, :])[upper]
    return float((first_signs == second_signs).mean())


def _default_max_length(folder: Path) -> int:
    """The retriever's default, or less for a model with fewer positions."""
    positions = getattr(load_config(folder), "max_position_embeddings", None)
    return min(DEFAULT_RERANK_MAX_LENGTH, positions or DEFAULT_RERANK_MAX_LENGTH)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.retriever.rerank_export",
        description="Export a reranker model folder's cross-encoder to ONNX, checked against torch.",
    )
    parser.add_argument("folder", type=Path, help="a CrossEncoder saved with save_pretrained")
    parser.add_argument(
        "--max-length",
        type=int,
        help=f"tokens per pair in the probe check (default: {DEFAULT_RERANK_MAX_LENGTH}, "
        "or fewer for a model with fewer positions)",
    )
    parser.add_argument("--quantize", action="store_true", help=f"also write {QUANTIZED_ONNX_FILE}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    folder: Path = args.folder
    try:
        max_length = args.max_length or _default_max_length(require_folder(folder))
        export = export_onnx(folder, max_length=max_length, quantize=args.quantize)
    except RerankModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for exported in export.files:
        log.info(
            "%s: %d bytes, sha256 %s; against torch on %d probe pairs (max_length %d): "
            "logits within %.2e, order kept for %.0f%% of pairs",
            folder / exported.file,
            exported.size_bytes,
            exported.sha256,
            export.probe_pairs,
            export.max_length,
            exported.max_abs_diff,
            100 * exported.order_agreement,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
