"""Search modes through the gateway, end to end: keyword, dense and hybrid over the real stack."""

from __future__ import annotations

import grpc
import pytest

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc


def search(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
    query: str,
    *,
    mode: common_pb2.SearchMode.ValueType = common_pb2.SEARCH_MODE_UNSPECIFIED,
    fusion: common_pb2.FusionParams | None = None,
) -> gateway_pb2.SearchResponse:
    """The top 5; an unspecified mode is the server's default, no fusion the default fusion."""
    retrieval = gateway_pb2.RetrievalOptions(top_k=5, mode=mode, fusion=fusion)
    return gateway.Search(gateway_pb2.SearchRequest(namespace=namespace, query=query, retrieval=retrieval))


def test_keyword_mode_ranks_an_exact_identifier_first_without_the_embedder(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str
) -> None:
    response = search(gateway, three_documents, "pg_basebackup CronJob", mode=common_pb2.SEARCH_MODE_KEYWORD)

    assert response.mode == common_pb2.SEARCH_MODE_KEYWORD
    assert response.hits[0].document_id == "postgres-backup-runbook.md"
    assert all(hit.HasField("keyword") and not hit.HasField("dense") for hit in response.hits)
    assert [hit.keyword.rank for hit in response.hits] == list(range(1, len(response.hits) + 1))
    assert "embed" not in {timing.stage for timing in response.timings}


def test_the_default_mode_is_hybrid_with_both_legs_reported(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str
) -> None:
    query = "hotel cap per night for expensive cities"

    hybrid = search(gateway, three_documents, query)
    dense = search(gateway, three_documents, query, mode=common_pb2.SEARCH_MODE_DENSE)

    assert hybrid.mode == common_pb2.SEARCH_MODE_HYBRID
    assert dense.mode == common_pb2.SEARCH_MODE_DENSE
    assert hybrid.hits[0].document_id == "expense-policy.md"
    assert hybrid.hits[0].HasField("dense")
    assert hybrid.hits[0].HasField("keyword")
    dense_ranks = {(h.document_id, h.chunk_index): h.dense.rank for h in dense.hits}
    for hit in hybrid.hits:
        if (hit.document_id, hit.chunk_index) in dense_ranks:
            assert hit.dense.rank == dense_ranks[(hit.document_id, hit.chunk_index)]


def test_a_zero_keyword_weight_gives_the_dense_order(
    gateway: gateway_pb2_grpc.GatewayServiceStub, three_documents: str
) -> None:
    query = "who is paged when the primary database fails"
    dense = search(gateway, three_documents, query, mode=common_pb2.SEARCH_MODE_DENSE)

    hybrid = search(gateway, three_documents, query, fusion=common_pb2.FusionParams(keyword_weight=0))

    assert [(h.document_id, h.chunk_index) for h in hybrid.hits] == [
        (h.document_id, h.chunk_index) for h in dense.hits
    ]


@pytest.mark.parametrize(
    ("fusion", "message"),
    [
        (common_pb2.FusionParams(rrf_k=0), "fusion.rrf_k must be a number > 0"),
        (common_pb2.FusionParams(dense_weight=-1), "fusion.dense_weight must be a number 0.."),
        (common_pb2.FusionParams(candidate_depth=0), "fusion.candidate_depth must be 1..1000, got 0"),
    ],
)
def test_bad_fusion_settings_are_invalid_arguments(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    namespace: str,
    fusion: common_pb2.FusionParams,
    message: str,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        search(gateway, namespace, "backups", fusion=fusion)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (raised.value.details() or "")
