"""Through the real gateway and services: what only an inner service checks is refused with a
google.rpc.BadRequest naming the caller's own field, and an inner service's retry hint reaches the
caller as google.rpc.RetryInfo and grpc-retry-pushback-ms.

The gateway does not check ef_search, filters, generation options or page
tokens: the retriever and the generator do. Each case asks the inner service
the same thing directly and compares: the gateway's caller gets the inner
refusal's message and field, renamed to where its own request holds the value.

The retry hint comes from an embedder of the test's own whose queue holds one
text: an ingest's first batch of two chunk texts cannot fit, whatever the load,
so the embedder refuses it with RESOURCE_EXHAUSTED and a hint, every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from rag.generator.v1 import generator_pb2, generator_pb2_grpc
from rag.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from rag_cli.stack import Stack
from services.common.errors_interceptor import RETRY_PUSHBACK_KEY, STATUS_DETAILS_KEY
from services.common.registry import (
    EMBEDDER,
    GATEWAY_UPSTREAMS,
    GENERATOR,
    RETRIEVER,
    upstream_target_variable,
)
from tests.e2e.replicas import Replicas
from tests.internal_calls import signed_channel


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    # The fields of its google.rpc.BadRequest, the delay of its RetryInfo, its pushback.
    fields: list[str]
    retry_delay_ms: int | None
    pushback_ms: int | None


def refusal(call: Callable[[], object]) -> Refusal:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error = raised.value
    assert isinstance(error, grpc.Call)
    trailing = dict(error.trailing_metadata() or ())
    fields: list[str] = []
    retry_delay_ms = None
    if STATUS_DETAILS_KEY in trailing:
        for detail in status_pb2.Status.FromString(trailing[STATUS_DETAILS_KEY]).details:
            bad_request, retry = error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
            if detail.Unpack(bad_request):
                fields.extend(violation.field for violation in bad_request.field_violations)
            elif detail.Unpack(retry):
                retry_delay_ms = retry.retry_delay.ToMilliseconds()
    pushback = trailing.get(RETRY_PUSHBACK_KEY)
    return Refusal(
        error.code(),
        error.details() or "",
        fields,
        retry_delay_ms,
        None if pushback is None else int(pushback),
    )


def assert_passed_on(
    outer: Refusal, inner: Refusal, service: str, inner_field: str, outer_field: str
) -> None:
    """`outer` is `inner` as the gateway's caller must get it: the field renamed, in field and message."""
    assert inner.fields == [inner_field]
    assert inner.message.startswith(inner_field)
    assert outer.code == inner.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outer.fields == [outer_field]
    assert outer.message == f"{service}: {outer_field}{inner.message.removeprefix(inner_field)}"


@pytest.fixture(scope="module")
def retriever(stack: Stack) -> Iterator[retriever_pb2_grpc.RetrieverServiceStub]:
    with signed_channel(stack, RETRIEVER) as channel:
        yield retriever_pb2_grpc.RetrieverServiceStub(channel)


@pytest.fixture(scope="module")
def generator(stack: Stack) -> Iterator[generator_pb2_grpc.GeneratorServiceStub]:
    with signed_channel(stack, GENERATOR) as channel:
        yield generator_pb2_grpc.GeneratorServiceStub(channel)


EF_SEARCH_TOO_LARGE = 5000
QUESTION = "When does the nightly backup run?"


@pytest.mark.parametrize(
    ("rpc", "field"),
    [
        ("Search", "retrieval.ef_search"),
        ("Ask", "retrieval.ef_search"),
        ("AskStream", "request.retrieval.ef_search"),
    ],
)
def test_ef_search_out_of_the_retrievers_range_names_the_callers_field(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    retriever: retriever_pb2_grpc.RetrieverServiceStub,
    namespace: str,
    rpc: str,
    field: str,
) -> None:
    retrieval = gateway_pb2.RetrievalOptions(ef_search=EF_SEARCH_TOO_LARGE)
    ask = gateway_pb2.AskRequest(namespace=namespace, question=QUESTION, retrieval=retrieval, skip_cache=True)
    calls: dict[str, Callable[[], object]] = {
        "Search": lambda: gateway.Search(
            gateway_pb2.SearchRequest(namespace=namespace, query=QUESTION, retrieval=retrieval)
        ),
        "Ask": lambda: gateway.Ask(ask),
        "AskStream": lambda: list(gateway.AskStream(gateway_pb2.AskStreamRequest(request=ask))),
    }
    direct = retriever_pb2.SearchRequest(
        namespace=namespace, query_text=QUESTION, top_k=5, ef_search=EF_SEARCH_TOO_LARGE
    )

    outer = refusal(calls[rpc])
    inner = refusal(lambda: retriever.Search(direct))

    assert_passed_on(outer, inner, "retriever", "ef_search", field)


def _bad_key_filter() -> common_pb2.MetadataFilter:
    leaf = common_pb2.MetadataFilter(
        field=common_pb2.FieldCondition(
            key="no spaces allowed", equals=common_pb2.ScalarValue(bool_value=True)
        )
    )
    return common_pb2.MetadataFilter(
        all_of=common_pb2.FilterList(filters=[common_pb2.MetadataFilter(negate=leaf)])
    )


def test_a_bad_filter_deep_in_a_search_keeps_its_path_under_retrieval(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    retriever: retriever_pb2_grpc.RetrieverServiceStub,
    namespace: str,
) -> None:
    keyword = common_pb2.SEARCH_MODE_KEYWORD
    retrieval = gateway_pb2.RetrievalOptions(mode=keyword, filter=_bad_key_filter())

    outer = refusal(
        lambda: gateway.Search(
            gateway_pb2.SearchRequest(namespace=namespace, query=QUESTION, retrieval=retrieval)
        )
    )
    inner = refusal(
        lambda: retriever.Search(
            retriever_pb2.SearchRequest(
                namespace=namespace, query_text=QUESTION, top_k=5, mode=keyword, filter=_bad_key_filter()
            )
        )
    )

    (inner_field,) = inner.fields
    assert inner_field.startswith("filter.all_of.filters[0].negate")
    assert_passed_on(outer, inner, "retriever", inner_field, f"retrieval.{inner_field}")


def test_delete_and_list_pass_the_retrievers_fields_on_under_the_same_names(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    retriever: retriever_pb2_grpc.RetrieverServiceStub,
    namespace: str,
) -> None:
    delete_outer = refusal(
        lambda: gateway.DeleteDocuments(
            gateway_pb2.DeleteDocumentsRequest(namespace=namespace, filter=_bad_key_filter())
        )
    )
    delete_inner = refusal(
        lambda: retriever.Delete(retriever_pb2.DeleteRequest(namespace=namespace, filter=_bad_key_filter()))
    )
    list_outer = refusal(
        lambda: gateway.ListDocuments(
            gateway_pb2.ListDocumentsRequest(namespace=namespace, page_token="not*a*token")
        )
    )
    list_inner = refusal(
        lambda: retriever.ListDocuments(
            retriever_pb2.ListDocumentsRequest(namespace=namespace, page_token="not*a*token")
        )
    )

    (delete_field,) = delete_inner.fields
    assert_passed_on(delete_outer, delete_inner, "retriever", delete_field, delete_field)
    assert_passed_on(list_outer, list_inner, "retriever", "page_token", "page_token")


@pytest.mark.parametrize("stream", [False, True], ids=["Ask", "AskStream"])
def test_generation_options_only_the_generator_checks_name_the_callers_field(
    gateway: gateway_pb2_grpc.GatewayServiceStub,
    generator: generator_pb2_grpc.GeneratorServiceStub,
    namespace: str,
    stream: bool,
) -> None:
    options = generator_pb2.GenerationOptions(temperature=3.0)
    ask = gateway_pb2.AskRequest(namespace=namespace, question=QUESTION, generation=options, skip_cache=True)
    direct = generator_pb2.GenerateRequest(question=QUESTION, options=options)

    if stream:
        outer = refusal(lambda: list(gateway.AskStream(gateway_pb2.AskStreamRequest(request=ask))))
        inner = refusal(
            lambda: list(generator.GenerateStream(generator_pb2.GenerateStreamRequest(request=direct)))
        )
        fields = ("request.options.temperature", "request.generation.temperature")
    else:
        outer = refusal(lambda: gateway.Ask(ask))
        inner = refusal(lambda: generator.Generate(direct))
        fields = ("options.temperature", "generation.temperature")

    assert_passed_on(outer, inner, "generator", *fields)


# --- a retry hint from the embedder ---


@pytest.fixture(scope="module")
def tight_gateway(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[gateway_pb2_grpc.GatewayServiceStub]:
    """A gateway of its own in front of an embedder whose queue holds one text (the cache off,
    so every text goes to the queue), and the session's retriever and generator."""
    processes = Replicas(stack, tmp_path_factory.mktemp("tight-embedder"))
    try:
        processes.start(["embedder-tight"], EMBEDDER_MAX_QUEUED_TEXTS="1", EMBEDDER_CACHE_SIZE="0")
        targets = {upstream_target_variable(u): stack.target(u.name) for u in GATEWAY_UPSTREAMS}
        targets[upstream_target_variable(EMBEDDER)] = processes.target("embedder-tight")
        processes.start(["gateway-tight"], **targets)
        with grpc.insecure_channel(processes.target("gateway-tight")) as channel:
            yield gateway_pb2_grpc.GatewayServiceStub(channel)
    finally:
        processes.stop()


def test_an_embedders_retry_hint_reaches_the_caller(
    tight_gateway: gateway_pb2_grpc.GatewayServiceStub, namespace: str
) -> None:
    documents = [
        gateway_pb2.Document(id="tides", text="The Moon's pull raises the tides twice a day."),
        gateway_pb2.Document(id="bees", text="Worker bees turn nectar into honey in the hive."),
    ]

    refused = refusal(
        lambda: tight_gateway.IngestDocuments(
            gateway_pb2.IngestDocumentsRequest(namespace=namespace, documents=documents), timeout=60
        )
    )

    assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.message.startswith("embedder: the embedder is overloaded"), refused.message
    assert refused.fields == []
    assert refused.retry_delay_ms is not None
    assert refused.retry_delay_ms > 0
    assert refused.pushback_ms == refused.retry_delay_ms
    # One text fits the queue: the same gateway and embedder serve a search.
    tight_gateway.Search(gateway_pb2.SearchRequest(namespace=namespace, query="honey"), timeout=60)
