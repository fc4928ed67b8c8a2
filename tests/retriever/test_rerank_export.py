"""The ONNX export of a reranker folder: checked against torch, recorded in the card, never half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.retriever import rerank_export
from services.retriever.rerank_export import MAX_ABS_DIFF, PROBE_PAIRS, export_onnx, order_agreement
from services.retriever.rerank_folder import (
    DEFAULT_ONNX_FILE,
    QUANTIZED_ONNX_FILE,
    RerankModelError,
    read_card,
    sha256_of,
)
from services.retriever.rerank_onnx import load_onnx_cross_encoder
from services.retriever.rerank_torch import load_torch_cross_encoder
from tests.retriever.tiny_cross_encoder import CARD, build_tiny_reranker_folder

MAX_LENGTH = 64


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A trainer's folder before its export: weights, tokenizer and card."""
    return build_tiny_reranker_folder(tmp_path / "reranker", max_length=MAX_LENGTH, export=False)


def test_the_export_matches_torch_and_is_recorded_in_the_card(folder: Path) -> None:
    exported = export_onnx(folder, max_length=MAX_LENGTH)

    model = exported.model
    assert model.file == DEFAULT_ONNX_FILE
    assert model.max_abs_diff <= MAX_ABS_DIFF
    assert model.order_agreement == 1.0
    assert model.sha256 == sha256_of(folder / DEFAULT_ONNX_FILE)
    assert model.size_bytes == (folder / DEFAULT_ONNX_FILE).stat().st_size
    assert exported.quantized is None
    assert exported.probe_pairs == len(PROBE_PAIRS)
    card = read_card(folder)
    assert card["onnx"] == json.loads(json.dumps(exported.to_json()))
    assert card["onnx"]["files"][DEFAULT_ONNX_FILE]["sha256"] == model.sha256
    assert {key: card[key] for key in CARD} == CARD, "the trainer's fields are kept"
    assert not [name for name in os.listdir(folder / "onnx") if name.startswith(".")], "no leftovers"


def test_the_exported_graph_scores_as_torch_does_beyond_the_probes(folder: Path) -> None:
    export_onnx(folder, max_length=MAX_LENGTH)
    pairs = [
        ("what is the population of berlin", "berlin is a big city with a river and a museum"),
        ("cat", "the cat is red " * 40),  # past max_length: truncated alike
        ("fast blue bird", ""),
        ("", "an empty query"),
    ] * 3

    onnx_scores = load_onnx_cross_encoder(folder, max_length=MAX_LENGTH).score(pairs, batch_size=5)
    torch_scores = load_torch_cross_encoder(str(folder), max_length=MAX_LENGTH).predict(pairs)

    assert onnx_scores == pytest.approx(torch_scores, abs=MAX_ABS_DIFF)


def test_quantize_writes_and_reports_the_int8_model(folder: Path) -> None:
    exported = export_onnx(folder, max_length=MAX_LENGTH, quantize=True)

    quantized = exported.quantized
    assert quantized is not None
    assert quantized.file == QUANTIZED_ONNX_FILE
    assert quantized.sha256 == sha256_of(folder / QUANTIZED_ONNX_FILE)
    # Reported, not bounded: int8 weights move logits further than float rounding.
    assert quantized.max_abs_diff > exported.model.max_abs_diff
    assert 0.0 <= quantized.order_agreement <= 1.0
    assert set(read_card(folder)["onnx"]["files"]) == {DEFAULT_ONNX_FILE, QUANTIZED_ONNX_FILE}


def test_exporting_again_without_quantize_drops_the_stale_int8_model(folder: Path) -> None:
    export_onnx(folder, max_length=MAX_LENGTH, quantize=True)

    export_onnx(folder, max_length=MAX_LENGTH)

    assert not (folder / QUANTIZED_ONNX_FILE).exists()
    assert set(read_card(folder)["onnx"]["files"]) == {DEFAULT_ONNX_FILE}


def test_an_export_that_disagrees_with_torch_is_not_written(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No real export is this far off; a bound below any difference stands in for a bad graph.
    monkeypatch.setattr(rerank_export, "MAX_ABS_DIFF", -1.0)

    with pytest.raises(RerankModelError, match=r"disagrees with torch.*nothing was written"):
        export_onnx(folder, max_length=MAX_LENGTH)

    assert os.listdir(folder / "onnx") == []
    assert "onnx" not in read_card(folder)


def test_a_model_with_several_labels_is_not_exported(tmp_path: Path) -> None:
    folder = build_tiny_reranker_folder(tmp_path / "two", max_length=MAX_LENGTH, num_labels=2, export=False)

    with pytest.raises(RerankModelError, match="single relevance score"):
        export_onnx(folder, max_length=MAX_LENGTH)

    assert not (folder / DEFAULT_ONNX_FILE).exists()


def test_a_max_length_beyond_the_models_positions_is_refused(folder: Path) -> None:
    # The tiny model has 128 positions.
    with pytest.raises(RerankModelError, match=r"max_length 512 is more than .* reads \(128 positions\)"):
        export_onnx(folder, max_length=512)


def test_a_folder_without_a_tokenizer_is_not_exported(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()

    with pytest.raises(RerankModelError, match="has no tokenizer"):
        export_onnx(folder, max_length=MAX_LENGTH)


@pytest.mark.parametrize(
    ("reference", "other", "agreement"),
    [
        ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0], 1.0),
        ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], 0.0),
        ([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], 2 / 3),
        ([1.0, 1.0], [1.0, 1.0], 1.0),
        ([1.0, 1.0], [1.0, 1.5], 0.0),
        ([0.5], [0.7], 1.0),
    ],
)
def test_order_agreement(reference: list[float], other: list[float], agreement: float) -> None:
    assert order_agreement(reference, other) == pytest.approx(agreement)


def _run_export(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.retriever.rerank_export", *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_the_command_exports_a_folder(folder: Path) -> None:
    # No --max-length: the retriever's default, cut to the tiny model's 128 positions.
    done = _run_export(str(folder), "--quantize")

    assert done.returncode == 0, done.stderr
    assert (folder / DEFAULT_ONNX_FILE).is_file()
    assert (folder / QUANTIZED_ONNX_FILE).is_file()
    assert read_card(folder)["onnx"]["max_length"] == 128
    assert f"sha256 {sha256_of(folder / DEFAULT_ONNX_FILE)}" in done.stderr


def test_the_command_fails_clearly_on_a_missing_folder(tmp_path: Path) -> None:
    done = _run_export(str(tmp_path / "missing"))

    assert done.returncode == 1
    assert "error: no cross-encoder model directory at" in done.stderr
