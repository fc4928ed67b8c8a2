"""The same model run by ONNX Runtime: 2-3x torch's speed on CPU, same vectors.

The ONNX file is exported here, from the weights already on disk (no
download), once per distinct set of weights: the cache key is a hash of the
parameters themselves. Every start-up checks the ONNX model against torch on a
fixed probe set, so a bad export can never serve.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling

from services.common.onnx_options import session_options
from services.embedder.tokens import TextTokenizer, TokenizedText, normalize, pad
from services.embedder.torch_encoder import TorchEncoder

log = logging.getLogger(__name__)

_OPSET = 17
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# Short and long, plain and odd, one longer than the model reads.
PROBE_TEXTS = (
    "What is the capital of France?",
    "Vitamin D deficiency is associated with a higher risk of hip fractures in older adults.",
    "x",
    "GRPC_STATUS=14 UNAVAILABLE: connection refused (errno 111) at 10.0.0.7:50051",
    "Ünïcödé, emoji 🙂 and 中文 mixed into one short line.",
    "The mitochondria is the powerhouse of the cell. " * 60,
)


class OnnxEncoder:
    backend = "onnx"

    def __init__(self, session: ort.InferenceSession, pooling_mode: str) -> None:
        if pooling_mode not in ("mean", "cls"):
            raise ValueError(f"the ONNX engine supports mean or cls pooling, not {pooling_mode!r}")
        self._session = session
        self._pooling_mode = pooling_mode
        self._input_names = [i.name for i in session.get_inputs()]

    def encode(self, batch: Sequence[TokenizedText]) -> npt.NDArray[np.float32]:
        inputs = pad(batch)
        feed = {name: inputs[name] for name in self._input_names}
        (hidden,) = self._session.run(["last_hidden_state"], feed)
        if self._pooling_mode == "cls":
            return normalize(hidden[:, 0])
        mask = inputs["attention_mask"][..., None].astype(np.float32)
        return normalize((hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None))


class _LastHiddenState(torch.nn.Module):
    """The transformer with named inputs and one output, as the exporter wants it."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        output = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return output.last_hidden_state  # type: ignore[no-any-return]


def weights_fingerprint(model: SentenceTransformer) -> str:
    digest = hashlib.sha256(f"opset{_OPSET}".encode())
    for name, parameter in model.state_dict().items():
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export(model: SentenceTransformer, tokenizer: TextTokenizer, path: Path) -> None:
    """Writes the transformer as ONNX, atomically: replicas sharing a cache never read half a file."""
    example = pad(tokenizer.tokenize(["an example input", "and a second, longer example input"]))
    arguments = tuple(torch.from_numpy(example[name]) for name in _INPUT_NAMES)
    dynamic_axes = {name: {0: "batch", 1: "tokens"} for name in (*_INPUT_NAMES, "last_hidden_state")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        partial = Path(scratch) / path.name
        with warnings.catch_warnings():
            # The tracer warns that shape checks inside the attention code become
            # constants; the probe check after loading proves the graph right.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHiddenState(cast(torch.nn.Module, model[0].auto_model)).eval(),
                arguments,
                str(partial),
                input_names=list(_INPUT_NAMES),
                output_names=["last_hidden_state"],
                dynamic_axes=dynamic_axes,
                opset_version=_OPSET,
                # The TorchScript exporter: it needs only the onnx package.
                dynamo=False,
            )
        os.replace(partial, path)


def agreement(first: npt.NDArray[np.float32], second: npt.NDArray[np.float32]) -> float:
    """The lowest cosine similarity between matching rows of two normalised embedding sets."""
    return float((first * second).sum(axis=1).min())


def load(
    model: SentenceTransformer,
    tokenizer: TextTokenizer,
    *,
    cache_dir: Path,
    intra_op_threads: int,
    min_cosine: float,
    spin_between_runs: bool = False,
) -> OnnxEncoder:
    """The ONNX engine for `model`, exported on first use and checked against torch every time."""
    path = cache_dir / f"{weights_fingerprint(model)}.onnx"
    if path.exists():
        log.info("using the ONNX export %s", path)
    else:
        log.info("exporting the model to ONNX at %s (once per set of weights)", path)
        export(model, tokenizer, path)
    options = session_options(intra_op_threads=intra_op_threads, spin_between_runs=spin_between_runs)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    encoder = OnnxEncoder(session, _pooling_mode(model))

    probe = tokenizer.tokenize(PROBE_TEXTS)
    cosine = agreement(encoder.encode(probe), TorchEncoder(model).encode(probe))
    if cosine < min_cosine:
        raise RuntimeError(
            f"the ONNX export {path} disagrees with torch (lowest probe cosine {cosine:.6f} < {min_cosine}); "
            "delete it to export again, or set EMBEDDER_BACKEND=torch"
        )
    log.info("ONNX export agrees with torch: lowest probe cosine %.6f", cosine)
    return encoder


def _pooling_mode(model: SentenceTransformer) -> str:
    for module in model:
        if isinstance(module, Pooling):
            mode = module.pooling_mode
            return mode if isinstance(mode, str) else "+".join(mode)
    raise ValueError("the model has no Pooling module; the ONNX engine cannot pool its output")
