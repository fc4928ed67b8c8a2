"""`rag`: the command-line client of the gateway, and `rag up` to run everything locally."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from rag.retriever.v1 import retriever_pb2
from rag_cli import bulk, consistency, documents, feedback, keys, render
from rag_cli import eval as evaluation
from rag_cli.answers import command as answers_command
from rag_cli.client import async_gateway_client, gateway_client
from rag_cli.reranker import command as reranker_command
from rag_cli.settings import CliSettings
from rag_cli.stack import Stack
from rag_cli.terminal import echo
from rag_client import RagClient, RagError
from services.common.registry import DEFAULT_PORTS, GATEWAY

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_QUESTION = "When do the nightly PostgreSQL backups run?"
MODES = {
    "hybrid": common_pb2.SEARCH_MODE_HYBRID,
    "dense": common_pb2.SEARCH_MODE_DENSE,
    "keyword": common_pb2.SEARCH_MODE_KEYWORD,
}


def _gateway(args: argparse.Namespace) -> RagClient:
    return gateway_client(args.gateway, args.settings.tls, args.api_key, args.timeout)


def _retrieval(args: argparse.Namespace) -> gateway_pb2.RetrievalOptions:
    mode = MODES[args.mode] if args.mode else common_pb2.SEARCH_MODE_UNSPECIFIED
    min_index_version = consistency.min_index_version(
        args.after_ingest, args.min_index_version, args.settings.state_dir, args.gateway, args.namespace
    )
    # None leaves a field unset.
    return gateway_pb2.RetrievalOptions(top_k=args.top_k, mode=mode, min_index_version=min_index_version)


def _record_index_version(args: argparse.Namespace, index_version: int) -> None:
    """Prints a write's consistency token and keeps it for the next command's --after-ingest."""
    consistency.record(args.settings.state_dir, args.gateway, args.namespace, index_version)
    echo(f"index version {index_version}: search or ask with --after-ingest to read at least this")


def ingest(args: argparse.Namespace) -> int:
    found = documents.find_files(Path(p) for p in args.paths)
    for link, folder in found.outside_links:
        echo(f"skipping {link}: a symbolic link that leads out of {folder}", error=True)
    if not (files := found.files):
        echo("no .txt, .md, .pdf or .html files found", error=True)
        return 1
    counts: dict[str, int] = {}
    failed: list[gateway_pb2.DocumentResult] = []
    with tqdm(total=len(files), unit="doc", desc="ingesting") as progress:
        responses = asyncio.run(_send(args, files, progress.update))
    for response in responses:
        for result in response.results:
            status = render.upsert_status(result.status)
            counts[status] = counts.get(status, 0) + 1
            if result.status == retriever_pb2.UPSERT_STATUS_FAILED:
                failed.append(result)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    echo(f"ingested {len(files)} documents into {args.namespace!r}: {summary}")
    # Calls side by side commit in any order: the largest version covers them all.
    _record_index_version(args, max(response.index_version for response in responses))
    for result in failed:
        echo(f"  failed: {result.document_id}: {result.error}", error=True)
    return 1 if failed else 0


async def _send(
    args: argparse.Namespace, files: list[tuple[Path, Path]], on_sent: Callable[[int], object]
) -> list[gateway_pb2.IngestDocumentsResponse]:
    """The files in batches, args.concurrency calls at once; each batch's files read as it is sent."""
    batches = (
        [documents.to_document(file, root) for file, root in batch]
        for batch in documents.batches(files, args.batch_size, args.batch_bytes)
    )
    async with async_gateway_client(args.gateway, args.settings.tls, args.api_key, args.timeout) as client:
        return await bulk.send_batches(client, args.namespace, batches, args.concurrency, on_sent)


def ask(args: argparse.Namespace) -> int:
    retrieval, skip_cache = _retrieval(args), args.no_cache
    with _gateway(args) as gateway:
        if not getattr(args, "stream", False):
            answer = gateway.ask(args.namespace, args.question, retrieval=retrieval, skip_cache=skip_cache)
            echo(render.answer(answer))
            return 0
        events = gateway.ask_stream(args.namespace, args.question, retrieval=retrieval, skip_cache=skip_cache)
        for event in events:
            kind = event.WhichOneof("event")
            if kind == "delta":
                echo(event.delta.text, end="", flush=True)
            elif kind == "final":
                echo("\n\n" + render.answer_details(event.final))
    return 0


def search(args: argparse.Namespace) -> int:
    with _gateway(args) as gateway:
        echo(render.search(gateway.search(args.namespace, args.query, retrieval=_retrieval(args))))
    return 0


def list_documents(args: argparse.Namespace) -> int:
    state = retriever_pb2.DOCUMENT_STATE_FAILED if args.failed else retriever_pb2.DOCUMENT_STATE_UNSPECIFIED
    listed = 0
    with _gateway(args) as gateway:
        for document in gateway.iter_documents(args.namespace, state=state, page_size=500):
            echo(render.document_line(document))
            listed += 1
    echo(f"{listed} {'failed ' if args.failed else ''}documents in {args.namespace!r}")
    return 0


def delete(args: argparse.Namespace) -> int:
    with _gateway(args) as gateway:
        response = gateway.delete_documents(args.namespace, args.ids)
    echo(f"deleted {response.deleted_documents} documents ({response.deleted_chunks} chunks)")
    _record_index_version(args, response.index_version)
    return 0


def _command(args: argparse.Namespace, *words: str) -> argparse.Namespace:
    """Another command's arguments, parsed as on the command line with this one's global options."""
    options = ["--gateway", args.gateway, "--namespace", args.namespace, "--timeout", str(args.timeout)]
    if args.api_key:
        options += ["--api-key", args.api_key]
    return _parser(args.settings).parse_args([*options, *words])


def _ports_from(gateway_port: int) -> dict[str, int]:
    """Every service's port, the gateway's moved to gateway_port and the others by as much."""
    return {name: gateway_port + port - GATEWAY.port for name, port in DEFAULT_PORTS.items()}


def up(args: argparse.Namespace) -> int:
    """Starts everything, ingests the samples, answers one question, serves until Ctrl-C."""
    import signal
    import threading

    metrics_ports = _ports_from(args.metrics_port) if args.metrics_port else {}
    database_url = args.settings.database_url
    stack = Stack(
        data_dir=Path(args.data_dir).resolve(),
        ports=_ports_from(args.port),
        database_url=database_url.get_secret_value() if database_url else None,
        metrics_ports=metrics_ports,
    )
    where = "DATABASE_URL" if stack.database_url else f"embedded PostgreSQL in {stack.data_dir / 'pgdata'}"
    echo(f"starting embedder, retriever, generator and gateway ({where}); logs in {stack.data_dir / 'logs'}")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    # Ctrl-C raises KeyboardInterrupt even when started from a shell that
    # ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with stack:
        # Ctrl-C at any point from here on, the demo included, goes straight to stopping.
        with contextlib.suppress(KeyboardInterrupt):
            echo(f"gateway serving on {stack.gateway_target}")
            for name in metrics_ports:
                echo(f"{name} metrics on {stack.metrics_url(name)}")
            args.gateway = stack.gateway_target
            if args.samples:
                ingest(_command(args, "ingest", args.samples))
                echo(f"\nQ: {DEMO_QUESTION}\n")
                ask(_command(args, "ask", DEMO_QUESTION))
            echo("\nserving; press Ctrl-C to stop")
            # In slices: the kernel may deliver Ctrl-C to another thread, and a wait
            # without a timeout would not wake to let the main thread's handler run.
            while not stopped.wait(0.5):
                pass
        # A second Ctrl-C must not cut the services' graceful stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        echo("\nstopping")
    echo("stopped")
    return 0


def _parser(settings: CliSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag", description=__doc__)
    parser.set_defaults(settings=settings)
    parser.add_argument(
        "--gateway",
        default=settings.gateway,
        help="gateway target (default: %(default)s, from $RAG_GATEWAY when set)",
    )
    parser.add_argument("--namespace", "-n", default=settings.namespace)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    parser.add_argument(
        "--api-key",
        default=settings.api_key.get_secret_value() if settings.api_key else None,
        help="API key for a gateway with authentication on (default: $RAG_API_KEY)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("up", help="run the whole system locally (Ctrl-C stops it)")
    command.add_argument("--data-dir", default=str(REPO_ROOT / "var"), help="database and logs")
    command.add_argument(
        "--samples", default=str(REPO_ROOT / "samples"), help="documents to ingest first ('' for none)"
    )
    command.add_argument(
        "--port",
        type=int,
        default=GATEWAY.port,
        help="gRPC: gateway on PORT, embedder PORT+1, retriever +2, generator +3 (default %(default)s)",
    )
    command.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics: gateway on PORT, embedder PORT+1, retriever +2, generator +3",
    )
    command.set_defaults(run=up)

    command = commands.add_parser("ingest", help="ingest .txt/.md/.pdf/.html files or folders")
    command.add_argument("paths", nargs="+")
    command.add_argument("--batch-size", type=int, default=16, help="documents per request")
    # Below the gateway's default message limit (GATEWAY_MAX_MESSAGE_BYTES, 4 MiB), with room for the rest.
    command.add_argument(
        "--batch-bytes",
        type=int,
        default=3 * 1024 * 1024,
        help="file bytes per request at most (one larger file goes alone)",
    )
    command.add_argument(
        "--concurrency",
        type=int,
        choices=range(1, bulk.MAX_CONCURRENCY + 1),
        default=bulk.DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"requests in flight at once, 1..{bulk.MAX_CONCURRENCY} (default %(default)s): they spread"
        " the embedding over the gateway's embedder replicas",
    )
    command.set_defaults(run=ingest)

    for name, run, help_text in (("ask", ask, "answer a question"), ("search", search, "retrieval only")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("question" if name == "ask" else "query")
        command.add_argument("--top-k", "-k", type=int, help="sources to retrieve (default: the server's)")
        command.add_argument("--mode", choices=list(MODES), help="search mode (default: the server's)")
        consistent = command.add_mutually_exclusive_group()
        consistent.add_argument(
            "--after-ingest",
            action="store_true",
            help="read data at least as recent as the last `rag ingest` or `rag delete` into this namespace,"
            " even from a read replica that lags behind it",
        )
        consistent.add_argument(
            "--min-index-version",
            type=consistency.parse_token,
            metavar="VERSION",
            help="read data at least as recent as index version VERSION (what a write printed)",
        )
        if name == "ask":
            command.add_argument("--stream", action="store_true", help="print the answer as it is written")
            command.add_argument("--no-cache", action="store_true", help="answer afresh, not from the cache")
        command.set_defaults(run=run)

    command = commands.add_parser("documents", help="list the namespace's documents")
    command.add_argument("--failed", action="store_true", help="only those whose last ingestion failed")
    command.set_defaults(run=list_documents)

    command = commands.add_parser("delete", help="delete documents by id")
    command.add_argument("ids", nargs="+")
    command.set_defaults(run=delete)

    evaluation.register(commands)
    answers_command.register(commands)
    feedback.register(commands)
    reranker_command.register(commands)
    keys.register(commands, settings.api_keys_file)
    return parser


def failure(error: RagError) -> str:
    """The status and the gateway's message, then each request field at fault and any retry hint."""
    lines = [f"error: {error.code.name}: {error.message}"]
    lines += [f"  {violation.field}: {violation.description}" for violation in error.field_violations]
    if error.retry_delay is not None:
        lines.append(f"  retry in {error.retry_delay.total_seconds():g} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser(CliSettings()).parse_args(argv)
    try:
        code: int = args.run(args)
    except RagError as error:
        echo(failure(error), error=True)
        return 2
    except (FileNotFoundError, ValueError) as error:
        echo(f"error: {error}", error=True)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
