"""Ask through the gateway, end to end: four service processes, PostgreSQL, the real model."""

from __future__ import annotations

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2
from tests.conftest import sample_document


def _ask(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, question: str
) -> gateway_pb2.AskResponse:
    return gateway.Ask(gateway_pb2.AskRequest(namespace=namespace, question=question))


def test_answer_cites_the_document_that_holds_it(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str
) -> None:
    response = _ask(gateway, three_documents, "When does the nightly base backup run?")

    assert response.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    assert "02:00 UTC" in response.answer
    cited_documents = {citation.document_id for citation in response.citations}
    assert cited_documents == {"postgres-backup-runbook.md"}
    cited_sources = [source for source in response.sources if source.cited]
    assert cited_sources, "the sources list marks what the answer cites"
    assert all(source.hit.document_id == "postgres-backup-runbook.md" for source in cited_sources)
    assert f"[{cited_sources[0].number}]" in response.answer
    assert {t.stage for t in response.timings} >= {"embed", "retrieve", "generate"}


def test_unrelated_question_gets_the_cannot_answer_outcome(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str
) -> None:
    response = _ask(gateway, three_documents, "What is the capital city of Peru?")

    assert response.outcome == generator_pb2.ANSWER_OUTCOME_NO_ANSWER
    assert not response.citations
    assert "cannot answer" in response.answer.lower()
    assert response.sources, "what was retrieved is still shown"


def test_stream_delivers_sources_then_deltas_then_the_final_answer(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str
) -> None:
    request = gateway_pb2.AskRequest(namespace=three_documents, question="How long are backups kept?")
    events = list(gateway.AskStream(gateway_pb2.AskStreamRequest(request=request)))

    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "sources"
    assert kinds[-1] == "final"
    assert set(kinds[1:-1]) == {"delta"}
    final = events[-1].final
    assert "".join(event.delta.text for event in events[1:-1]) == final.answer
    assert final.outcome == generator_pb2.ANSWER_OUTCOME_ANSWERED
    assert "14 days" in final.answer
    assert "time_to_first_token" in {t.stage for t in final.timings}


def test_search_returns_the_matching_document_first(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str
) -> None:
    response = gateway.Search(
        gateway_pb2.SearchRequest(
            namespace=three_documents,
            query="hotel cap per night for expensive cities",
            retrieval=gateway_pb2.RetrievalOptions(top_k=3),
        )
    )

    assert len(response.hits) == 3
    assert response.hits[0].document_id == "expense-policy.md"
    assert response.hits[0].dense.rank == 1
    scores = [hit.score for hit in response.hits]
    assert scores == sorted(scores, reverse=True)


def test_namespaces_do_not_see_each_other(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str, namespace: str
) -> None:
    other = namespace + "-other"
    gateway.IngestDocuments(
        gateway_pb2.IngestDocumentsRequest(
            namespace=other, documents=[sample_document("onboarding-checklist.txt")]
        )
    )

    hits = gateway.Search(
        gateway_pb2.SearchRequest(
            namespace=three_documents,
            query="first week onboarding checklist for new engineers",
            retrieval=gateway_pb2.RetrievalOptions(top_k=20),
        )
    ).hits

    assert hits
    assert "onboarding-checklist.txt" not in {hit.document_id for hit in hits}
