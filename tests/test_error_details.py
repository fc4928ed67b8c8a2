"""A dependency's field violations and retry hints reach the gateway's caller in the caller's terms.

The inner refusals here come from real grpc.aio servers with the services'
error interceptor: the retriever's own servicer (its store still starting, so
what it checks before the store is what it answers), and a server whose one
method refuses with whatever ServiceError a test gives it, for what no
servicer can be made to say without its model or database (a retry hint).
The origins tables are checked against the protos on both sides.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from gateway import error_details
from gateway.error_details import FieldOrigins, QueryOrigins, caller_details
from gateway.upstream import calling
from rag.common.v1 import common_pb2
from rag.embedder.v1 import embedder_pb2
from rag.gateway.v1 import gateway_pb2
from rag.generator.v1 import generator_pb2
from rag.retriever.v1 import retriever_pb2
from services.common import errors
from services.common.deferred import Deferred
from services.common.errors_interceptor import RETRY_PUSHBACK_KEY, STATUS_DETAILS_KEY, ErrorInterceptor
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import ChunkStore
from tests.retriever.serving import serving

# --- where an inner field came from ---


@pytest.mark.parametrize(
    ("inner", "outer"),
    [
        ("ef_search", "retrieval.ef_search"),
        ("filter", "retrieval.filter"),
        ("filter.any_of.filters[2].field.key", "retrieval.filter.any_of.filters[2].field.key"),
        ("query_text", "query"),
        ("namespace", "namespace"),
        # Fields the gateway fills in: nothing of the caller's.
        ("query_embedding", None),
        ("filters", None),
        ("efsearch", None),
    ],
)
def test_an_inner_field_path_maps_to_the_gateway_field_it_came_from(inner: str, outer: str | None) -> None:
    assert error_details.SEARCH.search.gateway_path(inner) == outer


def test_a_listed_sub_path_wins_over_the_field_it_lies_in() -> None:
    origins = FieldOrigins({"texts": "documents", "texts[0]": "query"})

    assert origins.gateway_path("texts[0]") == "query"
    assert origins.gateway_path("texts[1]") == "documents[1]"
    assert origins.gateway_path("texts (count)") == "documents (count)"


def test_ask_stream_holds_everything_under_its_request_field() -> None:
    assert error_details.ASK_STREAM.search.gateway_path("ef_search") == "request.retrieval.ef_search"
    assert error_details.ASK_STREAM.embed.gateway_path("texts[0]") == "request.question"
    assert (
        error_details.ASK_STREAM.generate.gateway_path("request.options.temperature")
        == "request.generation.temperature"
    )
    assert error_details.ASK.generate.gateway_path("history[3].role") == "history[3].role"


def _field(message: Descriptor, path: str) -> FieldDescriptor:
    """The field a path such as "request.retrieval.filter" or "texts[0]" names in `message`."""
    within: Descriptor | None = message
    field: FieldDescriptor | None = None
    for part in path.split("."):
        name, _, index = part.partition("[")
        assert within is not None, f"{path}: {name} is inside a field that is not a message"
        field = within.fields_by_name.get(name)
        assert field is not None, f"{within.full_name} has no field {name!r} ({path})"
        assert not index or field.is_repeated, f"{path}: {name} is not repeated"
        within = field.message_type
    assert field is not None
    return field


def _descriptor(message: type[Message]) -> Descriptor:
    # The stubs allow for the C implementation's own Descriptor class, which has the same fields.
    return cast(Descriptor, message.DESCRIPTOR)


def _same_kind(inner: FieldDescriptor, outer: FieldDescriptor) -> bool:
    if inner.type == FieldDescriptor.TYPE_MESSAGE:
        return outer.type == FieldDescriptor.TYPE_MESSAGE and inner.message_type == outer.message_type
    return inner.type == outer.type


# Each query RPC: its origins, its request, and the request of the generator call it makes (if any).
QUERY_RPCS: Sequence[tuple[str, QueryOrigins, type[Message], type[Message] | None]] = [
    ("Search", error_details.SEARCH, gateway_pb2.SearchRequest, None),
    ("Ask", error_details.ASK, gateway_pb2.AskRequest, generator_pb2.GenerateRequest),
    (
        "AskStream",
        error_details.ASK_STREAM,
        gateway_pb2.AskStreamRequest,
        generator_pb2.GenerateStreamRequest,
    ),
]
INNER_REQUESTS: dict[str, type[Message]] = {
    "embed": embedder_pb2.EmbedRequest,
    "search": retriever_pb2.SearchRequest,
    "index_version": retriever_pb2.GetIndexVersionRequest,
}
ORIGIN_TABLES: list[tuple[str, FieldOrigins, type[Message], type[Message]]] = [
    *(
        (f"{rpc}.{call}", getattr(origins, call), inner, outer)
        for rpc, origins, outer, _ in QUERY_RPCS
        for call, inner in INNER_REQUESTS.items()
    ),
    *(
        (f"{rpc}.generate", origins.generate, generate, outer)
        for rpc, origins, outer, generate in QUERY_RPCS
        if generate is not None
    ),
    (
        "DeleteDocuments",
        error_details.DELETE,
        retriever_pb2.DeleteRequest,
        gateway_pb2.DeleteDocumentsRequest,
    ),
    (
        "ListDocuments",
        error_details.LIST,
        retriever_pb2.ListDocumentsRequest,
        gateway_pb2.ListDocumentsRequest,
    ),
    (
        "SubmitFeedback",
        error_details.SUBMIT_FEEDBACK,
        retriever_pb2.SubmitFeedbackRequest,
        gateway_pb2.SubmitFeedbackRequest,
    ),
    (
        "ListFeedback",
        error_details.LIST_FEEDBACK,
        retriever_pb2.ListFeedbackRequest,
        gateway_pb2.ListFeedbackRequest,
    ),
]


def test_every_inner_call_of_a_query_rpc_is_checked() -> None:
    assert {*INNER_REQUESTS, "generate"} == set(QueryOrigins.__dataclass_fields__)
    assert error_details.SEARCH.generate == error_details.GATEWAY_MADE


@pytest.mark.parametrize(
    ("origins", "inner", "outer"),
    [table[1:] for table in ORIGIN_TABLES],
    ids=[table[0] for table in ORIGIN_TABLES],
)
def test_every_origin_names_real_fields_of_the_same_kind_on_both_sides(
    origins: FieldOrigins, inner: type[Message], outer: type[Message]
) -> None:
    assert origins.paths
    for inner_path, outer_path in origins.paths.items():
        inner_field = _field(_descriptor(inner), inner_path)
        outer_field = _field(_descriptor(outer), outer_path)
        assert _same_kind(inner_field, outer_field), f"{inner_path} -> {outer_path}"


# --- a real retriever's refusals, through calling() ---


def _bad_search(**fields: Any) -> retriever_pb2.SearchRequest:
    return retriever_pb2.SearchRequest(namespace="docs", query_text="whales", top_k=3, **fields)


async def _raised_by_retriever(
    request: retriever_pb2.SearchRequest, origins: FieldOrigins
) -> errors.ServiceError:
    starting: Deferred[ChunkStore] = Deferred("the document store")
    async with serving(RetrieverServicer(starting)) as retriever:
        with pytest.raises(errors.ServiceError) as raised, calling("retriever", origins):
            await retriever.Search(request, timeout=10)
    return raised.value


async def test_a_retriever_field_violation_is_renamed_to_the_gateway_field_in_field_and_message() -> None:
    raised = await _raised_by_retriever(_bad_search(mode=99), error_details.SEARCH.search)

    assert isinstance(raised, errors.InvalidArgument)
    assert raised.field == "retrieval.mode"
    assert raised.message.startswith("retriever: retrieval.mode must be one of SEARCH_MODE_UNSPECIFIED")


async def test_a_violation_deep_in_a_filter_keeps_its_path_under_the_gateway_field() -> None:
    empty_group = common_pb2.MetadataFilter(any_of=common_pb2.FilterList())
    request = _bad_search(filter=common_pb2.MetadataFilter(negate=empty_group))

    raised = await _raised_by_retriever(request, error_details.ASK_STREAM.search)

    assert raised.field == "request.retrieval.filter.negate.any_of"
    assert raised.message == "retriever: request.retrieval.filter.negate.any_of must hold at least one filter"


async def test_without_origins_a_violation_is_dropped_and_its_message_kept() -> None:
    raised = await _raised_by_retriever(_bad_search(mode=99), error_details.GATEWAY_MADE)

    assert isinstance(raised, errors.InvalidArgument)
    assert raised.field is None
    assert raised.message.startswith("retriever: mode must be one of")


# --- any inner refusal, through a real server with the services' error interceptor ---

Behavior = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]
RawCall = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]


@asynccontextmanager
async def serving_method(behavior: Behavior) -> AsyncIterator[RawCall]:
    """A call to `behavior`, served by a real server with our services' error interceptor."""
    handler = grpc.method_handlers_generic_handler(
        "test.Service", {"Method": grpc.unary_unary_rpc_method_handler(behavior)}
    )
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: RawCall = channel.unary_unary("/test.Service/Method")
            yield call
    finally:
        await server.stop(None)


def refusing(error: errors.ServiceError) -> AbstractAsyncContextManager[RawCall]:
    """A call that the server refuses with `error`, as our services send a refusal."""

    async def refuse(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        raise error

    return serving_method(refuse)


async def _passed_on(
    inner: errors.ServiceError, origins: FieldOrigins = error_details.GATEWAY_MADE
) -> errors.ServiceError:
    async with refusing(inner) as call:
        with pytest.raises(errors.ServiceError) as raised, calling("embedder", origins):
            await call(b"", timeout=10)
    return raised.value


@pytest.mark.parametrize(
    "inner",
    [
        errors.ResourceExhausted("the embedder is overloaded; retry in about 250 ms", retry_after_ms=250),
        errors.Unavailable("the embedder is draining; retry on another replica", retry_after_ms=40),
    ],
    ids=["resource exhausted", "unavailable"],
)
async def test_a_retry_hint_is_passed_on_as_it_is(inner: errors.ServiceError) -> None:
    raised = await _passed_on(inner)

    assert raised.code == inner.code
    assert raised.retry_after_ms == inner.retry_after_ms
    assert inner.message in raised.message


async def test_a_field_violation_and_a_retry_hint_travel_together() -> None:
    inner = errors.InvalidArgument("texts[0] must not be empty or blank", field="texts[0]", retry_after_ms=5)

    raised = await _passed_on(inner, error_details.ASK.embed)

    assert (raised.field, raised.retry_after_ms) == ("question", 5)
    assert raised.message == "embedder: question must not be empty or blank"


async def test_a_refusal_without_details_gets_none() -> None:
    raised = await _passed_on(errors.FailedPrecondition("the LLM rejected the request: HTTP 400"))

    assert isinstance(raised, errors.FailedPrecondition)
    assert (raised.field, raised.retry_after_ms) == (None, None)


async def test_the_gateways_caller_gets_the_renamed_violation_and_the_hint_on_the_wire() -> None:
    """Two hops, as in production: the inner refusal, then the gateway's status built from it."""
    inner = errors.InvalidArgument("ef_search must be 1..1000, got 0", field="ef_search", retry_after_ms=7)

    async with refusing(inner) as inner_call:

        async def gateway(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            with calling("retriever", error_details.SEARCH.search):
                return await inner_call(request, timeout=10)

        async with serving_method(gateway) as gateway_call:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await gateway_call(b"", timeout=10)

    error = raised.value
    trailing = dict(error.trailing_metadata() or ())
    status_bytes = trailing[STATUS_DETAILS_KEY]
    assert isinstance(status_bytes, bytes)
    status = status_pb2.Status.FromString(status_bytes)
    bad_request, retry = error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
    assert [status.details[0].Unpack(bad_request), status.details[1].Unpack(retry)] == [True, True]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "retriever: retrieval.ef_search must be 1..1000, got 0"
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("retrieval.ef_search", error.details())
    ]
    assert retry.retry_delay.ToMilliseconds() == 7
    assert trailing[RETRY_PUSHBACK_KEY] == "7"


# --- statuses that do not carry what they should ---


def _failure(code: grpc.StatusCode, *trailing: tuple[str, str | bytes]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), "refused")


def _status(code: grpc.StatusCode, *details: Message) -> tuple[str, bytes]:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(code=code.value[0], message="refused", details=packed)
    return (STATUS_DETAILS_KEY, status.SerializeToString())


def _retry_info(milliseconds: int) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(milliseconds)
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _violation(field: str) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description="bad")]
    )


EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("trailing", "retry_after_ms"),
    [
        pytest.param([_status(EXHAUSTED, _retry_info(300)), (RETRY_PUSHBACK_KEY, "300")], 300, id="both"),
        pytest.param([_status(EXHAUSTED), (RETRY_PUSHBACK_KEY, "120")], 120, id="pushback alone"),
        pytest.param([_status(EXHAUSTED, _retry_info(-5))], None, id="delay in the past"),
        pytest.param([_status(EXHAUSTED), (RETRY_PUSHBACK_KEY, "-1")], None, id="pushback: do not retry"),
        pytest.param([_status(EXHAUSTED), (RETRY_PUSHBACK_KEY, "soon")], None, id="pushback not a number"),
        pytest.param(
            [_status(grpc.StatusCode.UNAVAILABLE, _retry_info(300))], None, id="details of another code"
        ),
        pytest.param([(STATUS_DETAILS_KEY, b"\xff\xff not a status")], None, id="undecodable details"),
    ],
)
def test_a_retry_hint_is_read_only_where_it_is_sound(
    trailing: list[tuple[str, str | bytes]], retry_after_ms: int | None
) -> None:
    details = caller_details(_failure(EXHAUSTED, *trailing), error_details.GATEWAY_MADE)

    assert details.retry_after_ms == retry_after_ms


def test_the_first_field_violation_is_the_one_passed_on() -> None:
    trailing = _status(grpc.StatusCode.INVALID_ARGUMENT, _violation("ef_search"), _violation("top_k"))

    details = caller_details(
        _failure(grpc.StatusCode.INVALID_ARGUMENT, trailing), error_details.SEARCH.search
    )

    assert (details.field, details.inner_field) == ("retrieval.ef_search", "ef_search")
    assert details.reworded("ef_search must be 1..1000") == "retrieval.ef_search must be 1..1000"
    assert (
        details.reworded("filters may be nested at most 8 levels") == "filters may be nested at most 8 levels"
    )


def test_a_status_gRPC_made_up_on_the_way_passes_on_no_details() -> None:
    lost = grpc.aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((RETRY_PUSHBACK_KEY, "50")),
        "Received message larger than max (5000000 vs. 4194304)",
    )

    with pytest.raises(errors.ResourceExhausted) as raised, calling("retriever", error_details.SEARCH.search):
        raise lost

    assert (raised.value.field, raised.value.retry_after_ms) == (None, None)
    assert "larger than max" not in raised.value.message
