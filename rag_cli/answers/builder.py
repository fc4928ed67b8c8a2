"""`rag golden build-beir FOLDER -o OUT.jsonl`: a golden set from a BEIR dataset's judged queries.

Every query of the split with a relevant document (a qrels score above 0) becomes an answerable item,
q<query id>, asked in NS (--namespace; by default eval-<folder name>, where `rag eval FOLDER` puts the
corpus) and expecting its relevant documents. With --unanswerable-namespace NS2, a namespace that does
not hold the dataset (one holding samples/, say), each query is also an unanswerable item,
q<query id>-out, asked in NS2, where the only right reply is "cannot answer". --limit N keeps a sample
of N queries drawn with --seed, in the split's order.

Only the split asked for is read (train by default): the test split only with --split test, so a
golden set never leaks held-out judgments by accident. The corpus is not ingested here: run
`rag eval FOLDER` (or ingest it into NS otherwise) before `rag eval-answers`.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path

from rag_cli import beir
from rag_cli import eval as evaluation
from rag_cli.answers import golden
from rag_cli.answers.golden import GoldenItem
from rag_cli.terminal import echo

DEFAULT_SEED = 13
UNANSWERABLE_SUFFIX = "-out"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = commands.add_parser("golden", help="make golden sets for `rag eval-answers`")
    actions = group.add_subparsers(dest="golden_command", required=True)
    command = actions.add_parser(
        "build-beir",
        help="a golden set from a BEIR folder's judged queries",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("dataset", type=Path, help="folder with corpus.jsonl, queries.jsonl, qrels/")
    command.add_argument("--split", default="train", help="qrels/<split>.tsv (default: train)")
    command.add_argument(
        "--namespace",
        dest="answerable_namespace",
        metavar="NS",
        help="where the corpus is (default: eval-<folder name>, as `rag eval` ingests it)",
    )
    command.add_argument(
        "--unanswerable-namespace",
        metavar="NS2",
        help="also ask every query here, a namespace without the dataset, expecting no answer",
    )
    command.add_argument(
        "--limit", type=evaluation.int_in(1, None), metavar="N", help="a sample of N queries (by --seed)"
    )
    command.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="draws the sample (default %(default)s)"
    )
    command.add_argument(
        "-o", "--out", type=Path, required=True, metavar="OUT", help="the JSONL file to write"
    )
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    namespace = args.answerable_namespace or evaluation.default_namespace(args.dataset)
    dataset = beir.load(args.dataset, args.split)
    items = build(dataset.queries, namespace, args.unanswerable_namespace, args.limit, args.seed)
    written = golden.write(args.out, items)
    answerable = sum(item.answerable for item in items)
    echo(
        f"wrote {written} items to {args.out}: {answerable} answerable in {namespace!r}"
        + (
            f", {written - answerable} unanswerable in {args.unanswerable_namespace!r}"
            if written > answerable
            else ""
        )
    )
    return 0


def build(
    queries: Sequence[beir.Query],
    namespace: str,
    unanswerable_namespace: str | None,
    limit: int | None,
    seed: int,
) -> list[GoldenItem]:
    """The golden items of the queries (those with a relevant document), or of a seeded sample."""
    golden.require_namespace(namespace, "--namespace")
    if unanswerable_namespace is not None:
        golden.require_namespace(unanswerable_namespace, "--unanswerable-namespace")
    if unanswerable_namespace == namespace:
        raise ValueError(
            f"--unanswerable-namespace must differ from the dataset's namespace ({namespace!r}):"
            " its questions are asked where the dataset is not"
        )
    judged = [query for query in queries if any(score > 0 for score in query.gains.values())]
    if not judged:
        raise beir.DatasetError("no query of the split has a relevant document")
    if limit is not None and limit < len(judged):
        chosen = set(random.Random(seed).sample(range(len(judged)), limit))
        judged = [query for index, query in enumerate(judged) if index in chosen]
    items = [_item(query, namespace, answerable=True) for query in judged]
    if unanswerable_namespace is not None:
        items += [_item(query, unanswerable_namespace, answerable=False) for query in judged]
    return items


def _item(query: beir.Query, namespace: str, *, answerable: bool) -> GoldenItem:
    record: dict[str, object] = {
        "id": f"q{query.id}" + ("" if answerable else UNANSWERABLE_SUFFIX),
        "question": query.text,
        "namespace": namespace,
        "answerable": answerable,
    }
    if answerable:
        record["expected_documents"] = [document for document, score in query.gains.items() if score > 0]
    try:
        # The rules of a golden set file, so that what is written reads back.
        return golden.parse_item(record)
    except ValueError as error:
        raise ValueError(f"query {query.id!r}: {error}") from None
