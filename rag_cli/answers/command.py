"""`rag eval-answers GOLDEN`: how well the running system answers a golden set's questions.

Every question is asked through the gateway (Ask, answer cache skipped), a few at once. Then:

- outcome: answerable questions answered, unanswerable ones refused ("cannot answer");
- context precision@k, average precision and recall of the sources (items with expected documents);
- citation precision (cited sources from an expected document) and coverage (sentences with a [n]);
- faithfulness: the share of the answer's sentences supported by the sources they cite, judged by an
  LLM (--judge-base-url, --judge-model) or, by default and offline, by an embedding proxy (the
  sentence's cosine similarity to its cited sentences; a proxy, not an LLM judgment);
- answer token F1 and embedding similarity to the expected answer (items with one);
- latency per stage (p50, p95) and tokens.

--json FILE writes every item's answer, sources, sentences, verdicts and scores beside the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from rag_cli import bulk
from rag_cli import eval as evaluation
from rag_cli.answers import builder, golden, report, scoring
from rag_cli.answers.claims import Judgment
from rag_cli.answers.golden import GoldenItem
from rag_cli.answers.metrics import AnswerSentence, strip_markers
from rag_cli.answers.run import Asked, ask_all
from rag_cli.client import async_gateway_client
from rag_cli.terminal import echo
from services.common.limits import MAX_TOP_K

if TYPE_CHECKING:
    # numpy and the model stack only when answers are evaluated: `rag` starts without them.
    from rag_cli.answers.embedding import TextEmbedder
    from rag_cli.answers.judges import Judge, LlmJudge

DEFAULT_CONCURRENCY = 4
DEFAULT_FAILURES_SHOWN = 10


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`rag eval-answers` and `rag golden`."""
    command = commands.add_parser(
        "eval-answers",
        help="answer quality on a golden set: outcome, context, citations, faithfulness, latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("golden", type=Path, help="the golden set: JSONL, one question per line")
    command.add_argument(
        "--limit", type=evaluation.int_in(1, None), metavar="N", help="ask only the first N questions"
    )
    command.add_argument(
        "--concurrency",
        type=evaluation.int_in(1, bulk.MAX_CONCURRENCY),
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"questions asked at once (and judge requests), 1..{bulk.MAX_CONCURRENCY} (default %(default)s)",
    )
    command.add_argument(
        "--top-k",
        type=evaluation.int_in(1, MAX_TOP_K),
        metavar="K",
        help="sources retrieved per question (default: the gateway's)",
    )
    command.add_argument(
        "--mode", choices=list(evaluation.MODES), help="search mode (default: the gateway's)"
    )
    command.add_argument(
        "--namespace",
        dest="golden_namespace",
        metavar="NS",
        help="ask every question in NS instead of the namespace its item names (for a golden set"
        " of one namespace, ingested elsewhere; the global -n does not apply)",
    )
    command.add_argument(
        "--json", dest="json_path", type=Path, metavar="FILE", help="write the full report as JSON to FILE"
    )
    command.add_argument(
        "--failures",
        type=evaluation.int_in(0, None),
        default=DEFAULT_FAILURES_SHOWN,
        metavar="N",
        help="failing items to print, with why (default %(default)s)",
    )
    judge = command.add_argument_group(
        "LLM judge",
        "judge faithfulness with a chat model behind the OpenAI protocol, not the embedding proxy",
    )
    judge.add_argument("--judge-base-url", metavar="URL", help="such as http://127.0.0.1:8080/v1")
    judge.add_argument("--judge-model", metavar="NAME", help="the model to ask")
    judge.add_argument("--judge-api-key", metavar="KEY", help="for a server that wants one")
    command.set_defaults(run=run)
    builder.register(commands)


def run(args: argparse.Namespace) -> int:
    if (args.judge_base_url is None) != (args.judge_model is None):
        raise ValueError("--judge-base-url and --judge-model go together: give both for an LLM judge")
    if args.judge_api_key is not None and args.judge_base_url is None:
        raise ValueError("--judge-api-key is for an LLM judge: give --judge-base-url and --judge-model too")
    items = golden.read(args.golden)[: args.limit]
    if args.golden_namespace:
        items = in_namespace(items, args.golden_namespace)
    judge_label, scores = asyncio.run(evaluate(args, items))
    settings = {
        "top_k": args.top_k,
        "mode": args.mode,
        "namespace": args.golden_namespace,
        "limit": args.limit,
        "concurrency": args.concurrency,
    }
    written = report.document(str(args.golden), judge_label, settings, scores)
    failing = [score for score in scores if score.failures][: args.failures]
    echo(report.render_text(written, failing, args.top_k))
    if args.json_path:
        args.json_path.write_text(json.dumps(written, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        echo(f"wrote {args.json_path}")
    return 0


def in_namespace(items: Sequence[GoldenItem], namespace: str) -> list[GoldenItem]:
    """The items moved to `namespace`; refused for a golden set of more than one namespace, whose
    items would be asked where their answers (or their absence) were never meant to be."""
    golden.require_namespace(namespace, "--namespace")
    named = sorted({item.namespace for item in items})
    if len(named) > 1:
        raise ValueError(
            f"--namespace moves a golden set of one namespace; this one names {len(named)}"
            f" ({', '.join(named)})"
        )
    return [dataclasses.replace(item, namespace=namespace) for item in items]


async def evaluate(
    args: argparse.Namespace, items: Sequence[GoldenItem]
) -> tuple[str, list[scoring.ItemScore]]:
    """(what judged faithfulness, each item's scores). The embedding model, when needed, loads in a
    thread while the questions are asked."""
    from rag_cli.answers.embedding import TextEmbedder
    from rag_cli.answers.judges import EmbeddingProxy

    async with contextlib.AsyncExitStack() as resources:
        # Checked first: a judge that cannot answer ends the run before any work is spent.
        llm_judge = await _llm_judge(args, resources) if args.judge_base_url is not None else None
        needs_model = llm_judge is None or any(item.expected_answer is not None for item in items)
        loading = asyncio.create_task(asyncio.to_thread(TextEmbedder.load)) if needs_model else None
        try:
            answers = await _ask(args, items)
            embedder = await loading if loading else None
        finally:
            if loading is not None and not loading.done():
                # A thread cannot be stopped: let the load finish, so its task is not left behind.
                await asyncio.wait([loading])
        judge: Judge
        if llm_judge is not None:
            judge = llm_judge
        else:
            assert embedder is not None  # loaded whenever there is no LLM judge (needs_model)
            judge = EmbeddingProxy(embedder)
        sentences = [scoring.sentences_of(answer) for answer in answers]
        judgments = await _judge(judge, answers, sentences)
    similarities = await asyncio.to_thread(_answer_similarities, embedder, answers)
    scores = [
        scoring.score(answer, answer_sentences, answer_judgments, similarity, args.top_k)
        for answer, answer_sentences, answer_judgments, similarity in zip(
            answers, sentences, judgments, similarities, strict=True
        )
    ]
    return judge.label, scores


async def _llm_judge(args: argparse.Namespace, resources: contextlib.AsyncExitStack) -> LlmJudge:
    """The LLM judge, checked with one request before any question is asked; its HTTP client closes
    with `resources`."""
    import openai

    from rag_cli.answers.judges import LlmJudge

    client = await resources.enter_async_context(
        openai.AsyncOpenAI(
            base_url=args.judge_base_url,
            api_key=args.judge_api_key or "unused",
            timeout=args.timeout,
            max_retries=2,
        )
    )
    judge = LlmJudge(client, args.judge_model, args.concurrency)
    await judge.check()
    return judge


async def _ask(args: argparse.Namespace, items: Sequence[GoldenItem]) -> list[Asked]:
    mode = evaluation.MODES[args.mode] if args.mode else common_pb2.SEARCH_MODE_UNSPECIFIED
    retrieval = gateway_pb2.RetrievalOptions(top_k=args.top_k, mode=mode)
    async with async_gateway_client(args.gateway, args.settings.tls, args.api_key, args.timeout) as client:
        with tqdm(total=len(items), unit="question", desc="asking") as progress:
            return await ask_all(client, items, retrieval, args.concurrency, progress.update)


async def _judge(
    judge: Judge, answers: Sequence[Asked], sentences: Sequence[Sequence[AnswerSentence]]
) -> list[list[Judgment]]:
    """Every answer's sentences' judgments; the sentences citing nothing are UNCITED, unasked."""
    claims = [
        [scoring.claim_of(answer, sentence) for sentence in answer_sentences]
        for answer, answer_sentences in zip(answers, sentences, strict=True)
    ]
    asked = [claim for answer_claims in claims for claim in answer_claims if claim is not None]
    with tqdm(total=len(asked), unit="sentence", desc="judging") as progress:
        judged = iter(await judge.judge(asked, progress.update))
    return [
        [scoring.UNCITED if claim is None else next(judged) for claim in answer_claims]
        for answer_claims in claims
    ]


def _answer_similarities(embedder: TextEmbedder | None, answers: Sequence[Asked]) -> list[float | None]:
    """Each answered item's cosine similarity of its answer (markers stripped) to the expected one."""
    pairs = {
        index: (strip_markers(answer.answer), answer.item.expected_answer)
        for index, answer in enumerate(answers)
        if answer.answered and answer.item.expected_answer is not None
    }
    similarities: list[float | None] = [None] * len(answers)
    if not pairs or embedder is None:
        return similarities
    vectors = embedder.embed([text for pair in pairs.values() for text in pair])
    for row, index in enumerate(pairs):
        similarities[index] = float(vectors[2 * row] @ vectors[2 * row + 1])
    return similarities
