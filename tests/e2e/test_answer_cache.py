"""The answer cache: a repeated question is answered from it, until the namespace's documents change.

With GATEWAY_SEMANTIC_CACHE_MIN_SIMILARITY set (a gateway of the tests' own), a
paraphrase takes the cached answer too, and a negation never does.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from rag.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag_cli.stack import Stack
from services.common.registry import EMBEDDER, GATEWAY_UPSTREAMS, upstream_target_variable
from tests.e2e.replicas import Replicas
from tests.internal_calls import signed_channel
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan


def _document(text: str) -> gateway_pb2.Document:
    return gateway_pb2.Document(id="wifi.md", title="Office wifi", text=text)


def _ingest(gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, text: str) -> None:
    gateway.IngestDocuments(
        gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=[_document(text)])
    )


def _ask(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, question: str
) -> gateway_pb2.AskResponse:
    return gateway.Ask(gateway_pb2.AskRequest(namespace=namespace, question=question))


OLD = "The office wifi password is heron-42. Guests use the network called visitors."
NEW = (
    "The office wifi password is osprey-77 since the spring rotation. Guests use the network called visitors."
)


def test_a_repeated_question_is_a_hit_and_an_ingest_makes_it_a_miss_with_the_new_answer(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    _ingest(gateway, namespace, OLD)

    first = _ask(gateway, namespace, "What is the office wifi password?")
    again = _ask(gateway, namespace, "  what is the office   WIFI password? ")
    _ingest(gateway, namespace, NEW)
    after_change = _ask(gateway, namespace, "What is the office wifi password?")
    after_change_again = _ask(gateway, namespace, "What is the office wifi password?")

    assert not first.cached
    assert "heron-42" in first.answer
    assert again.cached, "case and spacing do not make a new question"
    assert again.answer == first.answer
    assert [s.hit.text for s in again.sources] == [s.hit.text for s in first.sources]
    assert not after_change.cached, "the document changed: the old answer must not be served"
    assert "osprey-77" in after_change.answer
    assert "heron-42" not in after_change.answer
    assert after_change_again.cached


def test_a_delete_also_retires_cached_answers(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    _ingest(gateway, namespace, OLD)
    assert not _ask(gateway, namespace, "What is the office wifi password?").cached
    assert _ask(gateway, namespace, "What is the office wifi password?").cached

    gateway.DeleteDocuments(gateway_pb2.DeleteDocumentsRequest(namespace=namespace, document_ids=["wifi.md"]))
    after_delete = _ask(gateway, namespace, "What is the office wifi password?")

    assert not after_delete.cached
    assert "heron-42" not in after_delete.answer


def test_an_unchanged_reingest_keeps_the_cache_and_other_settings_miss(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    _ingest(gateway, namespace, OLD)
    _ask(gateway, namespace, "Which network do guests use?")
    _ingest(gateway, namespace, OLD)  # unchanged: nothing in the index moved

    assert _ask(gateway, namespace, "Which network do guests use?").cached
    other_top_k = gateway.Ask(
        gateway_pb2.AskRequest(
            namespace=namespace,
            question="Which network do guests use?",
            retrieval=gateway_pb2.RetrievalOptions(top_k=1),
        )
    )
    skipped = gateway.Ask(
        gateway_pb2.AskRequest(namespace=namespace, question="Which network do guests use?", skip_cache=True)
    )
    assert not other_top_k.cached
    assert not skipped.cached


def test_a_streamed_ask_replays_a_cached_answer_as_one_delta(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    _ingest(gateway, namespace, OLD)
    fresh = _ask(gateway, namespace, "What is the office wifi password?")

    events = list(
        gateway.AskStream(
            gateway_pb2.AskStreamRequest(
                request=gateway_pb2.AskRequest(
                    namespace=namespace, question="What is the office wifi password?"
                )
            )
        )
    )

    kinds = [event.WhichOneof("event") for event in events]
    assert kinds == ["sources", "delta", "final"]
    assert events[1].delta.text == fresh.answer
    assert events[2].final.cached
    assert events[2].final.answer == fresh.answer


def test_a_hit_is_marked_in_the_trace(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, otlp_receiver: OtlpReceiver
) -> None:
    _ingest(gateway, namespace, OLD)
    _ask(gateway, namespace, "Who uses the visitors network?")
    hit = gateway.Ask(
        gateway_pb2.AskRequest(namespace=namespace, question="Who uses the visitors network?"),
        metadata=(("traceparent", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"),),
    )
    assert hit.cached

    def cache_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [s for s in spans if s.trace_id == "ab" * 16 and s.name == "rag.gateway.cache"]

    (span,) = cache_spans(otlp_receiver.wait_for(cache_spans))
    assert span.attributes["rag.gateway.cache_hit"] is True


# The semantic gateway's threshold; the questions below were chosen so that the
# model puts both the paraphrase and the negation above it.
MIN_SIMILARITY = 0.95
QUESTION = "What is the office wifi password?"
PARAPHRASE = "What's the password for the office wifi?"
NEGATION = "What is not the office wifi password?"
ANOTHER_PARAPHRASE = "Which password does the office wifi use?"


@pytest.fixture(scope="module")
def semantic_gateway(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[gateway_pb2_grpc.GatewayServiceStub]:
    """A gateway with the semantic cache on, in front of the session's services."""
    processes = Replicas(stack, tmp_path_factory.mktemp("semantic-cache"))
    try:
        targets = {upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS}
        processes.start(
            ["gateway-semantic"], GATEWAY_SEMANTIC_CACHE_MIN_SIMILARITY=str(MIN_SIMILARITY), **targets
        )
        with grpc.insecure_channel(processes.target("gateway-semantic")) as channel:
            yield gateway_pb2_grpc.GatewayServiceStub(channel)
    finally:
        processes.stop()


def _similarity(stack: Stack, first: str, second: str) -> float:
    """The cosine similarity of two questions' query embeddings, from the embedder the gateway uses."""
    with signed_channel(stack, EMBEDDER) as channel:
        embedded = embedder_pb2_grpc.EmbedderServiceStub(channel).Embed(
            embedder_pb2.EmbedRequest(texts=[first, second], input_type=embedder_pb2.INPUT_TYPE_QUERY)
        )
    a, b = (np.array(e.values) for e in embedded.embeddings)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_paraphrase_takes_the_cached_answer_and_a_negation_does_not(
    semantic_gateway: gateway_pb2_grpc.GatewayServiceStub, stack: Stack, namespace: str
) -> None:
    _ingest(semantic_gateway, namespace, OLD)

    first = _ask(semantic_gateway, namespace, QUESTION)
    paraphrased = _ask(semantic_gateway, namespace, PARAPHRASE)
    negated = _ask(semantic_gateway, namespace, NEGATION)

    assert _similarity(stack, QUESTION, PARAPHRASE) >= MIN_SIMILARITY
    assert _similarity(stack, QUESTION, NEGATION) >= MIN_SIMILARITY, (
        "the guard, not the threshold, refuses it"
    )
    assert not first.cached
    assert paraphrased.cached, "a paraphrase above the threshold takes the cached answer"
    assert paraphrased.answer == first.answer
    assert [s.hit.text for s in paraphrased.sources] == [s.hit.text for s in first.sources]
    assert not negated.cached, "a negated question never takes the answer of the question it negates"


def test_a_semantic_hit_is_replayed_by_a_stream_until_the_namespace_changes(
    semantic_gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    _ingest(semantic_gateway, namespace, OLD)
    fresh = _ask(semantic_gateway, namespace, QUESTION)

    events = list(
        semantic_gateway.AskStream(
            gateway_pb2.AskStreamRequest(
                request=gateway_pb2.AskRequest(namespace=namespace, question=ANOTHER_PARAPHRASE)
            )
        )
    )
    _ingest(semantic_gateway, namespace, NEW)
    after_change = _ask(semantic_gateway, namespace, PARAPHRASE)

    assert [event.WhichOneof("event") for event in events] == ["sources", "delta", "final"]
    assert events[1].delta.text == fresh.answer
    assert events[2].final.cached
    assert not after_change.cached, "the document changed: no similar question's old answer either"
    assert "osprey-77" in after_change.answer


def test_a_semantic_hit_is_marked_in_the_trace(
    semantic_gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, otlp_receiver: OtlpReceiver
) -> None:
    _ingest(semantic_gateway, namespace, OLD)
    _ask(semantic_gateway, namespace, QUESTION)
    trace_id = "ef" * 16
    hit = semantic_gateway.Ask(
        gateway_pb2.AskRequest(namespace=namespace, question=PARAPHRASE),
        metadata=(("traceparent", f"00-{trace_id}-{'cd' * 8}-01"),),
    )
    assert hit.cached

    def lookup_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        names = ("rag.gateway.cache", "rag.gateway.semantic_cache")
        return [s for s in spans if s.trace_id == trace_id and s.name in names]

    received = otlp_receiver.wait_for(lambda all_spans: len(lookup_spans(all_spans)) >= 2)
    spans = {s.name: s for s in lookup_spans(received)}
    exact, semantic = spans["rag.gateway.cache"], spans["rag.gateway.semantic_cache"]
    assert exact.attributes["rag.gateway.cache_hit"] is False
    assert semantic.attributes["rag.gateway.cache_hit"] is True
    assert semantic.attributes["rag.gateway.cache_hit_kind"] == "semantic"
    similarity = semantic.attributes["rag.gateway.cache_similarity"]
    assert isinstance(similarity, float)
    assert MIN_SIMILARITY <= similarity <= 1.0
