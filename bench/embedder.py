"""Embedder throughput and latency, as ratios to the in-process ceiling measured in the same run.

    python bench/embedder.py [--quick] [--seconds 8] [--documents 150] [--data ../shared/datasets/scifact]

1. The ceiling, in this process: texts/s of tokenize + encode with the encoder
   the service loads (EmbeddingModel.load, default settings: ONNX) at batch
   sizes 1, 8, 32 and 64, for short query-like texts and for chunks; the best
   batch size is the ceiling. Beside it SentenceTransformer.encode (torch) at
   the same batch sizes, for the ONNX speed-up. Then the p50 of embedding one
   short text (ONNX, batch 1), the reference for query latency.
2. The embedder service, `python -m services.embedder` on a free port with the
   default settings but the embedding cache off (EMBEDDER_CACHE_SIZE=0):
   1, 8 and 32 clients (grpc.aio) each sending one short text per Embed call in
   a closed loop, 32 of them over 1, 4 and 32 channels (each channel its own TCP
   connection); single queries one at a time; chunks through EmbedStream in
   messages of 32.
3. Ingestion end to end: the whole stack (rag_cli.stack.Stack, embedded
   PostgreSQL in a temporary directory, cache off) ingesting --documents SciFact
   documents into a fresh namespace through IngestDocuments, two callers at a
   time, 25 documents a call; chunks/s counted from the responses.

The machine is shared, and other jobs come and go within seconds, so every
ratio compares figures taken in alternation, as bench/hnsw.py does: the
service and ingestion figures run in rounds, with a slice of the ceiling
(ONNX at its best batch size) before each round and after the last, and each
figure is divided by the ceiling of its own slices; single queries alternate
one by one with in-process encodes; the ceiling's own table rotates through
engines and batch sizes in rounds. The tables show the cores each process used
and what the rest of the machine took ("others"), so a figure squeezed by
another job, or by the clients (which run in this process, on the same cores
as the service), shows as such; "per core" is the ratio of texts per CPU
second of the service's processes to the ceiling's per CPU second of this
process, which tells the service's own overhead from CPU it did not get.

Texts come from SciFact (BEIR format, read in place, never copied): short
texts are its claims, titles and sentences of 5 to 20 words, shuffled; the
chunks are those of the documents ingested in 3 (abstracts of 250 words or
more), split as the gateway has the embedder split them (200 tokens, 40
overlap), so the chunk ceiling, the stream and the ingestion embed the same
chunks. Without SciFact the texts are generated. No service call repeats a
short text until all have been sent once, and the script checks that the
service's cache is off and that no answer came from it.

The targets (32 clients >= 0.9x the ceiling, single query p50 <= 1.3x
in-process, ingestion >= 0.8x the chunk ceiling) print PASS or MISS; the
script exits 0 either way. About five minutes on two cores (two with --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from benchkit.cli import DEFAULT_SCIFACT, parser
from benchkit.defaults import CHUNK_OVERLAP, CHUNK_TOKENS
from benchkit.machine import describe, load_average
from benchkit.output import log
from embedder_bench.ceiling import Reference, onnx_encode, single_text_ms, sweep, torch_encode
from embedder_bench.ingest import measure_ingest
from embedder_bench.report import Result, report
from embedder_bench.service import embedder_service, measure_service
from embedder_bench.settings import FULL, QUICK
from embedder_bench.texts import load_texts
from services.embedder.chunking import TokenChunker
from services.embedder.config import EmbedderSettings
from services.embedder.model import EmbeddingModel, default_model_path


def run(args: argparse.Namespace) -> Result:
    started = time.perf_counter()
    s = QUICK if args.quick else FULL
    if args.seconds:
        s = dataclasses.replace(s, round_s=args.seconds / s.rounds)
    if args.documents:
        s = dataclasses.replace(s, documents=args.documents)
    load_at_start = load_average()
    texts = load_texts(args.data, s.documents)

    log("loading the model in process (ONNX, as the service does) and SentenceTransformer (torch)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = EmbeddingModel.load(EmbedderSettings())
    transformer = SentenceTransformer(default_model_path(), device="cpu")
    chunker = TokenChunker(model.chunk_tokenizer)
    chunks = [c.text for d in texts.documents for c in chunker.split(d.text, CHUNK_TOKENS, CHUNK_OVERLAP)]
    short_tokens = float(np.mean([len(t) for t in model.tokenizer.tokenize(texts.short[:2000])]))
    chunk_tokens = float(np.mean([len(t) for t in model.tokenizer.tokenize(chunks)]))

    log("1. in-process ceiling")
    engines = {"onnx": onnx_encode(model), "torch": torch_encode(transformer)}
    ceilings = sweep(engines, {"short": texts.short, "chunks": chunks}, s)
    del engines, transformer
    single_ms = single_text_ms(model, iter(texts.short[::-1]), s.single_queries)
    references = (
        Reference(model, texts.short, ceilings["short"].best_batch, s.slice_s),
        Reference(model, chunks, ceilings["chunks"].best_batch, s.slice_s),
    )

    log("2. the embedder service")
    with (
        tempfile.TemporaryDirectory(prefix="rag-bench-embedder-") as data_dir,
        embedder_service(Path(data_dir)) as (target, server),
    ):
        service = asyncio.run(measure_service(target, server, model, texts, chunks, references, s))

    log("3. ingestion through the whole stack")
    ingested = measure_ingest(texts, references[1])
    return Result(
        describe(),
        load_at_start,
        texts,
        f"{Path(model.name).parent.name} ({model.dimension} dimensions, at most {model.max_tokens} tokens)",
        short_tokens,
        len(chunks),
        chunk_tokens,
        ceilings["short"],
        ceilings["chunks"],
        single_ms,
        references,
        service,
        ingested,
        time.perf_counter() - started,
    )


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--quick", action="store_true", help="a short smoke run (about two minutes)")
    arguments.add_argument(
        "--seconds", type=float, help="measured seconds per closed-loop level, over its rounds"
    )
    arguments.add_argument("--documents", type=int, help="documents to ingest")
    arguments.add_argument("--data", type=Path, default=DEFAULT_SCIFACT, help="SciFact in BEIR format")
    report(run(arguments.parse_args()))


if __name__ == "__main__":
    main()
