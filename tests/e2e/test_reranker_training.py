"""`rag reranker train` end to end: judgments in, a model folder out, served by a retriever process.

The generated collection is one the fused order gets wrong in a way a
cross-encoder can learn: each topic has a decoy that repeats the query's
words, which both legs rank first, and the judged-relevant document, which
says "answer" and ranks second. The base model is a tiny random BERT built by
the test (tests/retriever/tiny_cross_encoder.py), which knows "answer" but
not the topic words: trained on the judgments, it learns to put the document
that answers first. The same collection with the decoys judged relevant
gives a fused order that cannot be beaten, and no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from rag.retriever.v1 import retriever_pb2
from rag_cli.main import main
from rag_cli.reranker.command import VALIDATION_IDS_FILE
from rag_cli.stack import Stack
from rag_client import RagClient
from services.common.registry import GATEWAY_UPSTREAMS, RETRIEVER, upstream_target_variable
from services.retriever.rerank_folder import CARD_FILE
from tests.e2e.replicas import Replicas
from tests.retriever.tiny_cross_encoder import build_tiny_cross_encoder

TOPICS = 30
# Candidates the reranker reorders: each topic's decoy and its answer.
TOP_N = 2


# One word per topic, far apart in meaning, so both search legs find a topic's two documents first.
TOPIC_WORDS = """volcano glacier orchid falcon lantern saxophone cathedral submarine tornado cactus
parachute chocolate telescope dinosaur lighthouse accordion avalanche porcupine hurricane pyramid
trombone waterfall penguin carousel meteorite vineyard harpoon kangaroo igloo tapestry"""


def topic_words() -> list[str]:
    return TOPIC_WORDS.split()[:TOPICS]


def write_collection(folder: Path, *, judge_the_decoys: bool) -> Path:
    (folder / "qrels").mkdir(parents=True)
    corpus, queries, qrels = [], [], []
    for number, word in enumerate(topic_words()):
        decoy = {
            "_id": f"decoy-{number}",
            "title": f"{word} museum",
            "text": f"The {word} museum is a {word} museum.",
        }
        answer = {
            "_id": f"answer-{number}",
            "title": word,
            "text": f"answer: the {word} museum moved to the city by the river.",
        }
        corpus += [decoy, answer]
        queries.append({"_id": f"q-{number}", "text": f"where is the {word} museum"})
        qrels.append(f"q-{number}\t{(decoy if judge_the_decoys else answer)['_id']}\t1\n")
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(qrels))
    return folder


def train(stack: Stack, out: Path, base: Path, namespace: str, *source: str) -> int:
    """`rag reranker train` with settings that teach the tiny model in seconds; `source` says from what."""
    settings = ["--max-length", "64", "--epochs", "20", "--learning-rate", "1e-3", "--batch-size", "8"]
    # The answer ranks right behind its decoy: only replacing the fused order can lift it.
    ordering = ["--negatives", "1", "--candidates", "10", "--top-n", str(TOP_N), "--fusion", "replace"]
    return main(
        [
            "--gateway",
            stack.gateway_target,
            "--namespace",
            namespace,
            "reranker",
            "train",
            str(out),
            "--base-model",
            str(base),
            *settings,
            *ordering,
            *source,
        ]
    )


def from_beir(dataset: Path, namespace: str) -> list[str]:
    return ["--beir", str(dataset), "--beir-namespace", namespace]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-base"))


def first_hits(gateway: RagClient, namespace: str, query: str, rerank: bool) -> list[str]:
    retrieval = gateway_pb2.RetrievalOptions(
        top_k=TOP_N,
        mode=common_pb2.SEARCH_MODE_HYBRID,
        rerank=common_pb2.RerankParams(enabled=rerank, candidates=TOP_N),
    )
    return [hit.document_id for hit in gateway.search(namespace, query, retrieval=retrieval).hits]


def test_a_trained_reranker_puts_the_judged_answers_first(
    stack: Stack,
    base_model: Path,
    namespace: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dataset = write_collection(tmp_path / "decoys", judge_the_decoys=False)
    out = tmp_path / "reranker"

    assert train(stack, out, base_model, namespace, *from_beir(dataset, namespace)) == 0

    printed = capsys.readouterr().out
    card = json.loads((out / CARD_FILE).read_text())
    held_back = (out / VALIDATION_IDS_FILE).read_text().split()
    assert len(held_back) == round(TOPICS * 0.2)
    assert card["queries"] == {"training": TOPICS - len(held_back), "validation": len(held_back)}
    assert card["validation"]["reranked"] > card["validation"]["fused"]
    assert card["onnx"]["files"]["onnx/model.onnx"]["max_abs_diff"] <= 1e-3
    assert (out / "onnx" / "model.onnx").is_file()
    assert f"serve it with RETRIEVER_RERANK_MODEL={out.resolve()}" in printed

    # A retriever of its own serving the model, and a gateway in front of it.
    processes = Replicas(stack, tmp_path_factory.mktemp("reranking-retriever"))
    try:
        processes.start(
            ["retriever-rerank"], RETRIEVER_RERANK_MODEL=str(out), RETRIEVER_RERANK_FUSION="replace"
        )
        targets = {upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS}
        targets[upstream_target_variable(RETRIEVER)] = processes.target("retriever-rerank")
        processes.start(["gateway-rerank"], **targets)
        with RagClient(processes.target("gateway-rerank"), timeout_s=60) as gateway:
            for query_id in held_back:
                number = query_id.removeprefix("q-")
                query = f"where is the {topic_words()[int(number)]} museum"
                assert first_hits(gateway, namespace, query, rerank=False) == [
                    f"decoy-{number}",
                    f"answer-{number}",
                ]
                assert first_hits(gateway, namespace, query, rerank=True) == [
                    f"answer-{number}",
                    f"decoy-{number}",
                ]
        capsys.readouterr()
        evaluated = main(
            [
                "--gateway",
                processes.target("gateway-rerank"),
                "eval",
                str(dataset),
                "--split",
                "train",
                "--namespace",
                namespace,
                "--mode",
                "hybrid",
                "--rerank",
                "--rerank-top-n",
                str(TOP_N),
                "--query-ids",
                str(out / VALIDATION_IDS_FILE),
                "--json",
            ]
        )
        assert evaluated == 0
        report = json.loads(capsys.readouterr().out)
        assert report["queries"] == len(held_back)
        plain, reranked = report["modes"]["hybrid"], report["modes"]["hybrid+rerank"]
        assert reranked["metrics"]["mrr@10"] == 1.0 > plain["metrics"]["mrr@10"]
        assert "rerank" in reranked["latency_ms"]
        assert "rerank" not in plain["latency_ms"]
    finally:
        processes.stop()


def test_judgments_the_fused_order_already_meets_give_no_model(
    stack: Stack, base_model: Path, namespace: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = write_collection(tmp_path / "decoys-judged", judge_the_decoys=True)
    out = tmp_path / "reranker"

    assert train(stack, out, base_model, namespace, *from_beir(dataset, namespace)) == 1

    assert "does no better than the fused order" in capsys.readouterr().err
    assert not out.exists()
    assert not any(tmp_path.glob(".reranker*"))


def test_feedback_trains_a_reranker_and_judgments_of_deleted_documents_are_skipped(
    stack: Stack,
    base_model: Path,
    namespace: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    collection = write_collection(tmp_path / "decoys", judge_the_decoys=False)
    corpus = [json.loads(line) for line in (collection / "corpus.jsonl").read_text().splitlines()]
    relevant, not_relevant = retriever_pb2.FEEDBACK_LABEL_RELEVANT, retriever_pb2.FEEDBACK_LABEL_NOT_RELEVANT
    with RagClient(stack.gateway_target, timeout_s=60) as gateway:
        documents = [gateway_pb2.Document(id=d["_id"], title=d["title"], text=d["text"]) for d in corpus]
        gateway.ingest_documents(namespace, documents)
        for number, word in enumerate(topic_words()):
            judged = [
                retriever_pb2.FeedbackItem(document_id=f"answer-{number}", chunk_index=0, label=relevant),
                retriever_pb2.FeedbackItem(document_id=f"decoy-{number}", chunk_index=0, label=not_relevant),
            ]
            gateway.submit_feedback(namespace, f"where is the {word} museum", judged)
        gateway.delete_documents(namespace, ["answer-0"])
    out = tmp_path / "reranker"

    assert train(stack, out, base_model, namespace, "--from-feedback") == 0

    card = json.loads((out / CARD_FILE).read_text())
    assert (
        card["data"]
        == f"feedback of namespace {namespace} (1 questions without a relevant stored chunk skipped)"
    )
    assert sum(card["queries"].values()) == TOPICS - 1
    assert card["validation"]["reranked"] > card["validation"]["fused"]
    assert "fb-" in (out / VALIDATION_IDS_FILE).read_text()
