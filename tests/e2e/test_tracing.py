"""One Ask is one trace across all four services, exported over OTLP."""

from __future__ import annotations

import secrets

from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tests.conftest import sample_document
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

SERVICES = {"rag-gateway", "rag-embedder", "rag-retriever", "rag-generator"}


def test_one_ask_is_one_trace_spanning_every_service(
    gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str, otlp_receiver: OtlpReceiver
) -> None:
    gateway.IngestDocuments(
        gateway_pb2.IngestDocumentsRequest(
            namespace=namespace, documents=[sample_document("oncall-handbook.md")]
        )
    )
    # The caller starts the trace, as an instrumented client would: W3C traceparent in gRPC metadata.
    trace_id, client_span_id = secrets.token_hex(16), secrets.token_hex(8)
    gateway.Ask(
        gateway_pb2.AskRequest(namespace=namespace, question="When is the hand-over?"),
        metadata=(("traceparent", f"00-{trace_id}-{client_span_id}-01"),),
    )

    def complete(received: list[ReceivedSpan]) -> bool:
        # Spans arrive in batches, and a parent ends (and is exported) after its children.
        in_trace = [s for s in received if s.trace_id == trace_id]
        ids = {s.span_id for s in in_trace} | {client_span_id}
        return {s.service for s in in_trace} >= SERVICES and all(s.parent_span_id in ids for s in in_trace)

    spans = otlp_receiver.wait_for(complete)
    in_trace = [s for s in spans if s.trace_id == trace_id]

    assert {s.service for s in in_trace} >= SERVICES
    by_id = {s.span_id: s for s in in_trace}
    roots = [s for s in in_trace if s.parent_span_id not in by_id]
    assert [(r.service, r.name, r.parent_span_id) for r in roots] == [
        ("rag-gateway", "/rag.gateway.v1.GatewayService/Ask", client_span_id)
    ], "every span descends from the gateway's Ask, itself a child of the caller's span"
    for service in SERVICES - {"rag-gateway"}:
        server_spans = [s for s in in_trace if s.service == service and s.name.startswith("/rag.")]
        assert server_spans, f"{service} took part"
        for span in server_spans:
            parent = by_id[span.parent_span_id]
            assert parent.service == "rag-gateway", f"{service} is called by the gateway"
            assert _chain_to_root(span, by_id)[-1] == roots[0]


def _chain_to_root(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = [span]
    while chain[-1].parent_span_id in by_id:
        chain.append(by_id[chain[-1].parent_span_id])
    return chain
