"""The answer cache: a repeated question is answered from it, until the namespace's documents change."""

from __future__ import annotations

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
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
