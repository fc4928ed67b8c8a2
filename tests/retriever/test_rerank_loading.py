"""Serving a reranker folder: ONNX against torch, which model is loaded, and folders that must be refused."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.retriever.config import RetrieverSettings
from services.retriever.rerank import Reranker, rerank_order
from services.retriever.rerank_folder import (
    CARD_FILE,
    DEFAULT_ONNX_FILE,
    QUANTIZED_ONNX_FILE,
    WEIGHTS_FILE,
    RerankModelError,
    sha256_of,
)
from services.retriever.rerank_loading import describe, load_reranker
from services.retriever.rerank_onnx import load_onnx_cross_encoder
from services.retriever.rerank_text import passage_text
from tests.retriever.tiny_cross_encoder import CARD, build_tiny_reranker_folder

MAX_LENGTH = 64
QUERY = "how big is the population of berlin"
WORDS = "the a of and is cat dog bird fish berlin paris london city population museum river bank money water"
# Many distinct candidates of varied length, more than one batch's worth.
TEXTS = [" ".join(WORDS.split()[(i * 7) % 19 :][: 2 + i % 11]) + f" {'red ' * (i % 5)}" for i in range(45)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_reranker_folder(
        tmp_path_factory.mktemp("reranker"), max_length=MAX_LENGTH, quantize=True
    )


@pytest.fixture
def broken(folder: Path, tmp_path: Path) -> Path:
    """A copy of the good folder, for a test to break."""
    return Path(shutil.copytree(folder, tmp_path / "broken"))


@pytest.fixture
def onnx_and_torch(folder: Path) -> Iterator[tuple[Reranker, Reranker]]:
    onnx = load_reranker(str(folder), max_length=MAX_LENGTH)
    torch = load_reranker(str(folder), backend="torch", max_length=MAX_LENGTH)
    yield onnx, torch
    onnx.close()
    torch.close()


async def test_onnx_orders_candidates_exactly_as_torch(onnx_and_torch: tuple[Reranker, Reranker]) -> None:
    onnx, torch = onnx_and_torch
    assert len(set(TEXTS)) == len(TEXTS)

    onnx_scores = (await onnx.score(QUERY, TEXTS, budget_s=None)).scores
    torch_scores = (await torch.score(QUERY, TEXTS, budget_s=None)).scores

    assert onnx_scores is not None
    assert torch_scores is not None
    assert onnx_scores == pytest.approx(torch_scores, abs=1e-5)
    assert rerank_order(onnx_scores) == rerank_order(torch_scores)
    assert len(set(onnx_scores)) > len(TEXTS) // 2, "the scores tell the candidates apart"


def test_the_loaded_model_is_named_by_its_file_and_hash(folder: Path) -> None:
    onnx = load_reranker(str(folder), max_length=MAX_LENGTH)
    quantized = load_reranker(str(folder), onnx_file=QUANTIZED_ONNX_FILE, max_length=MAX_LENGTH)
    torch = load_reranker(str(folder), backend="torch", max_length=MAX_LENGTH)
    for reranker in (onnx, quantized, torch):
        reranker.close()

    assert (onnx.identity.backend, onnx.identity.file) == ("onnx", DEFAULT_ONNX_FILE)
    assert onnx.identity.sha256 == sha256_of(folder / DEFAULT_ONNX_FILE)
    assert quantized.identity.sha256 == sha256_of(folder / QUANTIZED_ONNX_FILE)
    assert (torch.identity.backend, torch.identity.file) == ("torch", WEIGHTS_FILE)
    assert torch.identity.sha256 == sha256_of(folder / WEIGHTS_FILE)
    assert onnx.identity.model == str(folder)
    assert onnx.identity.max_length == MAX_LENGTH
    assert onnx.identity.card["base_model"] == CARD["base_model"]
    line = describe(onnx.identity)
    assert f"sha256={onnx.identity.sha256}" in line
    assert "backend=onnx" in line
    assert 'card.base_model="tiny random BERT"' in line


def test_the_trainers_scorer_gives_the_retrievers_scores(folder: Path) -> None:
    pairs = [(QUERY, text) for text in TEXTS]
    reranker = load_reranker(str(folder), max_length=MAX_LENGTH)
    try:
        served = [reranker.scorer.predict([pair])[0] for pair in pairs]
    finally:
        reranker.close()

    scored = load_onnx_cross_encoder(folder, max_length=MAX_LENGTH).score(pairs, batch_size=8)

    assert scored == pytest.approx(served, abs=1e-5)


def _garbage_onnx(folder: Path) -> None:
    (folder / DEFAULT_ONNX_FILE).write_bytes(b"this is not an ONNX model")


def _no_onnx(folder: Path) -> None:
    (folder / DEFAULT_ONNX_FILE).unlink()


def _no_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


def _no_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _another_onnx(folder: Path) -> None:
    # A loadable graph, but not the one the export checked and recorded.
    shutil.copy(folder / QUANTIZED_ONNX_FILE, folder / DEFAULT_ONNX_FILE)


def _garbage_card(folder: Path) -> None:
    (folder / CARD_FILE).write_text("[1, 2", encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_garbage_onnx, r"onnx/model\.onnx is not a loadable ONNX model .*; export it with"),
        (_no_onnx, r"has no ONNX model at onnx/model\.onnx; export it with `python -m services"),
        (_no_tokenizer, r"has no tokenizer \(none of tokenizer\.json"),
        (_no_config, r"has no readable model config \(config\.json\)"),
        (_another_onnx, r"is not the file that was exported and checked"),
        (_garbage_card, r"reranker\.json cannot be read as JSON"),
    ],
)
def test_a_broken_folder_is_refused_saying_why(
    broken: Path, damage: Callable[[Path], None], message: str
) -> None:
    damage(broken)

    with pytest.raises(RerankModelError, match=message):
        load_reranker(str(broken), max_length=MAX_LENGTH)


def test_the_torch_backend_refuses_a_folder_without_a_tokenizer_too(broken: Path) -> None:
    _no_tokenizer(broken)

    with pytest.raises(RerankModelError, match="has no tokenizer"):
        load_reranker(str(broken), backend="torch", max_length=MAX_LENGTH)


def test_a_max_length_beyond_the_models_positions_is_refused(folder: Path) -> None:
    with pytest.raises(RerankModelError, match=r"set RETRIEVER_RERANK_MAX_LENGTH to at most 128"):
        load_reranker(str(folder), max_length=512)


def test_the_onnx_backend_needs_a_local_folder() -> None:
    with pytest.raises(RerankModelError, match="RETRIEVER_RERANK_BACKEND=torch for a Hugging Face name"):
        load_reranker("cross-encoder/some-hub-model-name")


def test_a_folder_exported_by_hand_without_a_card_is_served(broken: Path) -> None:
    (broken / CARD_FILE).unlink()

    reranker = load_reranker(str(broken), max_length=MAX_LENGTH)
    reranker.close()

    assert reranker.identity.card == {}


@pytest.mark.parametrize("onnx_file", ["/etc/model.onnx", "../other/model.onnx", "onnx/model.bin"])
def test_the_onnx_file_setting_must_name_a_file_in_the_folder(
    onnx_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/unused")

    with pytest.raises(ValidationError, match=r"must be a path inside the model folder ending in \.onnx"):
        RetrieverSettings(rerank_onnx_file=onnx_file)


def test_rerank_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/unused")
    monkeypatch.setenv("RETRIEVER_RERANK_FUSION", "rrf")
    monkeypatch.setenv("RETRIEVER_RERANK_FUSION_WEIGHT", "2.5")

    settings = RetrieverSettings()

    assert settings.rerank_backend == "onnx"
    assert settings.rerank_onnx_file == DEFAULT_ONNX_FILE
    assert settings.rerank_fusion_settings.mode == "rrf"
    assert settings.rerank_fusion_settings.weight == 2.5
    assert settings.rerank_fusion_settings.k == 60


@pytest.mark.parametrize(
    ("title", "text", "passage"),
    [
        ("", "the chunk", "the chunk"),
        ("   ", "the chunk", "the chunk"),
        ("Backups", "Backups run nightly.", "Backups run nightly."),
        ("Backups", "  Backups\nrun nightly.", "  Backups\nrun nightly."),
        ("Backups", "They run nightly.", "Backups\nThey run nightly."),
        (" Backups ", "They run nightly.", "Backups\nThey run nightly."),
    ],
)
def test_passage_text(title: str, text: str, passage: str) -> None:
    assert passage_text(title, text) == passage
