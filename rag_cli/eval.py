"""`rag eval`: retrieval quality and latency of the running system on a BEIR dataset.

The corpus is ingested through the gateway into a namespace of its own (again
and again at no cost: unchanged documents are not re-embedded), then every
judged query is searched once per mode. Chunk hits become a document ranking
(a document ranks where its best chunk does), scored with nDCG@10, Recall@100
and MRR@10 and averaged over the queries.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from rag.retriever.v1 import retriever_pb2
from rag_cli import beir, metrics
from rag_cli.client import gateway_client
from rag_cli.render import upsert_status
from rag_cli.terminal import echo
from rag_client import RagClient, RagError
from services.common.limits import MAX_TOP_K

MODES = {
    "dense": common_pb2.SEARCH_MODE_DENSE,
    "keyword": common_pb2.SEARCH_MODE_KEYWORD,
    "hybrid": common_pb2.SEARCH_MODE_HYBRID,
}
Metric = Callable[[Sequence[str], Mapping[str, float], int], float]
# (JSON key, table heading, function, cut-off)
METRICS: tuple[tuple[str, str, Metric, int], ...] = (
    ("ndcg@10", "nDCG@10", metrics.ndcg_at_k, 10),
    ("recall@100", "Recall@100", metrics.recall_at_k, 100),
    ("mrr@10", "MRR@10", metrics.mrr_at_k, 10),
)
PERCENTILES = (50, 95)
STATUSES = ("created", "updated", "unchanged")
# The gateway's answer when it does not offer a mode, or has no reranker (FAILED_PRECONDITION);
# any other failure ends the run.
MODE_REJECTIONS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.FAILED_PRECONDITION,
)
RERANKED_SUFFIX = "+rerank"


@dataclass(frozen=True)
class IngestSummary:
    documents: int
    skipped_blank: int
    statuses: Mapping[str, int]
    # The namespace's index version after the ingest: the searches read at least this.
    index_version: int

    def to_json(self) -> dict[str, int]:
        return {
            "documents": self.documents,
            "skipped_blank_text": self.skipped_blank,
            **self.statuses,
            "index_version": self.index_version,
        }


@dataclass(frozen=True)
class ModeResult:
    mode: str
    queries: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # "total" (client-side, per Search call) and each gateway stage -> {"p50": ms, "p95": ms}.
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {"queries": self.queries, "metrics": self.metrics, "latency_ms": self.latency_ms}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "eval", help="retrieval quality and latency on a BEIR dataset", description=__doc__
    )
    command.add_argument("dataset", type=Path, help="folder with corpus.jsonl, queries.jsonl, qrels/")
    command.add_argument("--split", default="test", help="qrels/<split>.tsv (default: test)")
    command.add_argument(
        "--mode",
        dest="modes",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        metavar="MODE",
        help="dense, keyword and/or hybrid (default: all three)",
    )
    command.add_argument("--json", dest="as_json", action="store_true", help="JSON on stdout")
    command.add_argument(
        "--namespace",
        dest="eval_namespace",
        metavar="NS",
        help="where the corpus goes (default: eval-<folder name>; the global -n does not apply)",
    )
    command.add_argument(
        "--top-k",
        type=int_in(1, MAX_TOP_K),
        default=MAX_TOP_K,
        metavar="K",
        help="chunks retrieved per query (default: %(default)s, the most a search returns)",
    )
    command.add_argument(
        "--limit", type=int_in(1, None), metavar="N", help="run only the first N judged queries"
    )
    command.add_argument(
        "--batch-size", type=int_in(1, 256), default=64, metavar="N", help="documents per request"
    )
    command.add_argument(
        "--query-ids",
        type=Path,
        metavar="FILE",
        help="run only the judged queries whose ids this file lists, one per line (such as the"
        " validation-queries.txt of a model `rag reranker train` wrote)",
    )
    command.add_argument(
        "--rerank",
        action="store_true",
        help="also run each mode with the retriever's rerank stage on, as a row of its own",
    )
    command.add_argument(
        "--rerank-top-n",
        type=int_in(1, MAX_TOP_K),
        metavar="N",
        help="with --rerank: candidates the reranker reorders (default: the retriever's)",
    )
    command.set_defaults(run=run)


def int_in(low: int, high: int | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            accepted = f"{low}..{high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {value}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    dataset = beir.load(args.dataset, args.split)
    queries = dataset.queries
    if args.query_ids:
        queries = [query for query in queries if query.id in read_query_ids(args.query_ids)]
    queries = queries[: args.limit]
    if not queries:
        raise beir.DatasetError(f"{args.dataset}: no query in split {args.split!r} has a relevant document")
    namespace = args.eval_namespace or default_namespace(args.dataset)
    reranks: list[common_pb2.RerankParams | None] = [None]
    if args.rerank:
        reranks.append(common_pb2.RerankParams(enabled=True, candidates=args.rerank_top_n))
    with gateway_client(args.gateway, args.settings.tls, args.api_key, args.timeout) as gateway:
        ingested = ingest_corpus(gateway, namespace, dataset.corpus, args.batch_size)
        results = [
            _evaluate_or_rejected(
                gateway, namespace, mode, queries, args.top_k, ingested.index_version, rerank
            )
            for mode in dict.fromkeys(args.modes)
            for rerank in reranks
        ]
    report = {
        "dataset": dataset.name,
        "path": str(args.dataset),
        "split": dataset.split,
        "namespace": namespace,
        "top_k": args.top_k,
        "queries": len(queries),
        "queries_without_relevant": dataset.unjudged_queries,
        "ingest": ingested.to_json(),
        "modes": {result.mode: result.to_json() for result in results},
    }
    echo(json.dumps(report, indent=2) if args.as_json else render(report))
    return 2 if any(result.error for result in results) else 0


def read_query_ids(path: Path) -> set[str]:
    """The ids a --query-ids file lists, one per line; blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    return {line.strip() for line in text.splitlines() if line.strip()}


def default_namespace(folder: Path) -> str:
    """eval-<folder name>, reduced to the namespace rule (a-z, 0-9, '_', '-'; at most 63)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", folder.resolve().name.lower()).strip("-") or "dataset"
    return f"eval-{name}"[:63]


def ingest_corpus(
    gateway: RagClient, namespace: str, corpus: Sequence[beir.CorpusDocument], batch_size: int
) -> IngestSummary:
    documents = [document for document in corpus if document.text.strip()]
    statuses = Counter(dict.fromkeys(STATUSES, 0))
    index_version = 0
    with tqdm(total=len(documents), unit="doc", desc="ingesting") as progress:
        for start in range(0, len(documents), batch_size):
            batch = documents[start : start + batch_size]
            response = gateway.ingest_documents(
                namespace, [gateway_pb2.Document(id=d.id, title=d.title, text=d.text) for d in batch]
            )
            statuses.update(upsert_status(result.status) for result in response.results)
            index_version = max(index_version, response.index_version)
            progress.update(len(batch))
    return IngestSummary(len(corpus), len(corpus) - len(documents), dict(statuses), index_version)


def _evaluate_or_rejected(
    gateway: RagClient,
    namespace: str,
    mode: str,
    queries: Sequence[beir.Query],
    top_k: int,
    min_index_version: int,
    rerank: common_pb2.RerankParams | None = None,
) -> ModeResult:
    """One mode's result, or its error when the gateway does not offer the mode (or the reranker)."""
    try:
        return evaluate_mode(gateway, namespace, mode, queries, top_k, min_index_version, rerank)
    except RagError as error:
        if error.code not in MODE_REJECTIONS:
            raise
        return ModeResult(row_name(mode, rerank), error=f"{error.code.name}: {error.message}")


def row_name(mode: str, rerank: common_pb2.RerankParams | None) -> str:
    """The mode's row in the report: mode+rerank when the rerank stage ran."""
    return mode + (RERANKED_SUFFIX if rerank else "")


def evaluate_mode(
    gateway: RagClient,
    namespace: str,
    mode: str,
    queries: Sequence[beir.Query],
    top_k: int,
    min_index_version: int,
    rerank: common_pb2.RerankParams | None = None,
) -> ModeResult:
    """Searches every query; with min_index_version (the ingest's token), on data at least that recent,
    so a read replica behind the ingest does not score an index missing part of the corpus.

    With `rerank`, the retriever's rerank stage runs as it says, and the result is named mode+rerank;
    without, the stage is off whatever the retriever's default.
    """
    retrieval = gateway_pb2.RetrievalOptions(
        top_k=top_k,
        mode=MODES[mode],
        min_index_version=min_index_version,
        rerank=rerank or common_pb2.RerankParams(enabled=False),
    )
    row = row_name(mode, rerank)
    scores: dict[str, list[float]] = defaultdict(list)
    latencies: dict[str, list[float]] = defaultdict(list)
    for query in tqdm(queries, unit="query", desc=row):
        started = time.perf_counter()
        response = gateway.search(namespace, query.text, retrieval=retrieval)
        latencies["total"].append((time.perf_counter() - started) * 1000)
        for stage, duration_ms in stage_durations(response.timings).items():
            latencies[stage].append(duration_ms)
        ranking = rank_documents(response.hits)
        gains = {doc: float(score) for doc, score in query.gains.items()}
        for name, _, metric, k in METRICS:
            scores[name].append(metric(ranking, gains, k))
    return ModeResult(
        row,
        queries=len(queries),
        metrics={name: statistics.fmean(values) for name, values in scores.items()},
        latency_ms={stage: _percentiles(values) for stage, values in latencies.items()},
    )


def rank_documents(hits: Sequence[retriever_pb2.SearchHit]) -> list[str]:
    """Document ids in the order of their first (best) chunk; later chunks are dropped."""
    return list(dict.fromkeys(hit.document_id for hit in hits))


def stage_durations(timings: Sequence[common_pb2.StageTiming]) -> dict[str, float]:
    """Milliseconds per stage name; a stage that ran more than once counts its sum."""
    durations: dict[str, float] = defaultdict(float)
    for timing in timings:
        durations[timing.stage] += timing.duration_ms
    return dict(durations)


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    return {f"p{p}": metrics.percentile(values, p) for p in PERCENTILES}


def render(report: Mapping[str, Any]) -> str:
    ingest = report["ingest"]
    skipped = f" ({report['queries_without_relevant']} judged without a relevant document not run)"
    lines = [
        f"{report['dataset']}, split {report['split']}: {report['queries']} queries"
        + (skipped if report["queries_without_relevant"] else ""),
        f"namespace {report['namespace']}: {ingest['documents']} documents, "
        + ", ".join(f"{ingest[s]} {s}" for s in STATUSES)
        + f", {ingest['skipped_blank_text']} skipped with blank text",
        "",
        *_table(report["modes"], report["top_k"]),
    ]
    return "\n".join(lines)


def _table(modes: Mapping[str, Mapping[str, Any]], top_k: int) -> list[str]:
    stages = list(dict.fromkeys(s for r in modes.values() for s in r.get("latency_ms", {}) if s != "total"))
    header = ["mode", "queries", *(label for _, label, _, _ in METRICS), "total ms p50/p95"]
    header += [f"{stage} ms p50/p95" for stage in stages]
    rows = [[mode, *_row(result, ["total", *stages])] for mode, result in modes.items()]
    full_rows = [header, *(row for row in rows if len(row) == len(header))]
    widths = [max(len(row[i]) for row in full_rows) for i in range(len(header))]
    widths[0] = max(len(row[0]) for row in [header, *rows])
    lines = [_line(header, widths)] + [_line(row, widths) for row in rows]
    return [*lines, "", f"top_k {top_k} chunks per query; a document ranks where its best chunk does"]


def _row(result: Mapping[str, Any], stages: Sequence[str]) -> list[str]:
    if "error" in result:
        return [f"error: {result['error']}"]
    latency = result["latency_ms"]
    cells = [str(result["queries"]), *(f"{result['metrics'][name]:.4f}" for name, _, _, _ in METRICS)]
    return cells + [
        f"{latency[s]['p50']:.1f}/{latency[s]['p95']:.1f}" if s in latency else "-" for s in stages
    ]


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    if len(cells) < len(widths):  # an error row: the message runs on after the mode
        return f"{cells[0]:<{widths[0]}}  {' '.join(cells[1:])}"
    padded = [f"{cells[0]:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(cells[1:], widths[1:], strict=True))]
    return "  ".join(padded).rstrip()
