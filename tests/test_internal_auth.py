"""Inner-hop tokens: the key file, what a token vouches for and how long, what a refusal says;
the local stack's key; and which upstream failure details the gateway keeps to its log."""

from __future__ import annotations

import logging
import math
import secrets
import stat
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from pathlib import Path

import grpc
import jwt
import pytest
from opentelemetry.sdk.trace import TracerProvider

from gateway.upstream import calling
from rag.common.v1 import common_pb2
from rag.embedder.v1 import embedder_pb2
from rag.retriever.v1 import retriever_pb2
from rag_cli.stack import Stack, free_port, write_internal_auth_key
from services.common.deferred import Deferred
from services.common.errors import ServiceError, Unauthenticated, Unavailable
from services.common.errors_interceptor import ErrorInterceptor
from services.common.internal_auth import (
    CLOCK_SKEW_S,
    EXPIRED_TOKEN,
    INVALID_TOKEN,
    ISSUER,
    MAX_TOKEN_LIFETIME_S,
    MIN_KEY_BYTES,
    MISSING_TOKEN,
    TOKEN_METADATA_KEY,
    InternalAuthConfigError,
    InternalAuthInterceptor,
    InternalClaims,
    TokenSigner,
    TokenVerifier,
    read_key,
    signing_interceptors,
)
from services.common.registry import EMBEDDER, RETRIEVER, SERVICES
from services.generator.config import GeneratorSettings
from services.retriever.servicer import RetrieverServicer
from services.retriever.store import ChunkStore
from tests.retriever.serving import serving

KEY = secrets.token_bytes(MIN_KEY_BYTES)
SETTING = "RETRIEVER_INTERNAL_AUTH_KEY_FILE"


def _verify(metadata: tuple[tuple[str, str], ...], key: bytes = KEY) -> InternalClaims:
    return TokenVerifier(key, RETRIEVER.name).verify(metadata)


def _refusal(metadata: tuple[tuple[str, str], ...]) -> str:
    with pytest.raises(Unauthenticated) as refused:
        _verify(metadata)
    return refused.value.message


# --- the key file ---


def test_a_key_file_that_is_not_set_is_refused_naming_the_variable() -> None:
    with pytest.raises(InternalAuthConfigError, match=f"^{SETTING} is not set"):
        read_key(None, SETTING)


def test_a_missing_key_file_is_refused_naming_the_variable_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(InternalAuthConfigError, match=f"^{SETTING}={missing}: cannot read"):
        read_key(missing, SETTING)


def test_a_key_shorter_than_32_bytes_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"k" * (MIN_KEY_BYTES - 1) + b"\n")
    with pytest.raises(InternalAuthConfigError, match=f"has {MIN_KEY_BYTES - 1} bytes; at least 32"):
        read_key(short, SETTING)


def test_the_key_is_the_file_without_surrounding_whitespace(tmp_path: Path) -> None:
    line = tmp_path / "key"
    line.write_bytes(b"  " + b"k" * MIN_KEY_BYTES + b"\n")
    assert read_key(line, SETTING) == b"k" * MIN_KEY_BYTES


def test_a_service_reads_its_key_from_its_own_variable() -> None:
    settings = GeneratorSettings()
    with pytest.raises(InternalAuthConfigError, match=r"^GENERATOR_INTERNAL_AUTH_KEY_FILE is not set"):
        settings.internal_auth_key()


# --- tokens ---


def test_a_token_vouches_for_the_namespaces_it_was_signed_for() -> None:
    signed = TokenSigner(KEY).metadata(RETRIEVER.name, lifetime_s=5, namespaces=["docs", "wiki"])
    assert _verify(signed) == InternalClaims(frozenset({"docs", "wiki"}))
    assert _verify(TokenSigner(KEY).metadata(RETRIEVER.name)) == InternalClaims(frozenset())


@pytest.mark.parametrize(
    ("lifetime_s", "lives_s"),
    [(2.0, 2.0), (None, MAX_TOKEN_LIFETIME_S), (10 * MAX_TOKEN_LIFETIME_S, MAX_TOKEN_LIFETIME_S)],
    ids=["the call's time left", "no deadline: the cap", "a longer deadline: the cap"],
)
def test_a_token_lives_the_call_s_time_left_at_most_the_cap(lifetime_s: float | None, lives_s: float) -> None:
    before = time.time()
    token = TokenSigner(KEY).token(EMBEDDER.name, lifetime_s=lifetime_s)
    after = time.time()

    claims = jwt.decode(token, options={"verify_signature": False})
    # Whole seconds (NumericDate): the expiry is rounded up, never down.
    assert before + lives_s <= claims["exp"] <= math.ceil(after + lives_s)


def test_no_token_is_missing() -> None:
    assert _refusal((("x-rag-tenant-namespaces", "docs"),)) == MISSING_TOKEN


def test_a_token_of_another_key_or_audience_is_invalid() -> None:
    assert _refusal(TokenSigner(secrets.token_bytes(MIN_KEY_BYTES)).metadata(RETRIEVER.name)) == INVALID_TOKEN
    assert _refusal(TokenSigner(KEY).metadata(EMBEDDER.name)) == INVALID_TOKEN


def test_two_tokens_in_one_call_are_invalid() -> None:
    signer = TokenSigner(KEY)
    assert _refusal(signer.metadata(RETRIEVER.name) + signer.metadata(RETRIEVER.name)) == INVALID_TOKEN


def test_an_expired_token_is_expired_past_the_clock_skew() -> None:
    now = int(time.time())
    stale = now - int(CLOCK_SKEW_S) - 2
    claims = {"iss": ISSUER, "aud": RETRIEVER.name, "iat": stale - 10, "exp": stale}
    assert _refusal(((TOKEN_METADATA_KEY, jwt.encode(claims, KEY, algorithm="HS256")),)) == EXPIRED_TOKEN


def test_namespaces_that_are_not_a_list_of_names_are_invalid() -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": RETRIEVER.name, "iat": now, "exp": now + 5, "namespaces": "docs"}
    assert _refusal(((TOKEN_METADATA_KEY, jwt.encode(claims, KEY, algorithm="HS256")),)) == INVALID_TOKEN


def test_a_tenant_check_is_refused_for_a_service_whose_rpcs_name_no_namespace() -> None:
    with pytest.raises(ValueError, match=r"EmbedderService\.Embed cannot be checked for its tenant"):
        InternalAuthInterceptor(
            TokenVerifier(KEY, EMBEDDER.name),
            tenant_service=embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"],
        )


async def _echo(request: bytes, context: object) -> bytes:
    return request


async def _echo_stream(request: bytes, context: object) -> AsyncIterator[bytes]:
    yield request


async def _first(requests: AsyncIterator[bytes], context: object) -> bytes:
    return await anext(requests)


async def _first_stream(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
    yield await anext(requests)


ECHO = grpc.method_handlers_generic_handler(
    "test.Echo",
    {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(_echo),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(_echo_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(_first),
        "StreamStream": grpc.stream_stream_rpc_method_handler(_first_stream),
    },
)


async def _requests() -> AsyncIterator[bytes]:
    yield b"ping"


async def _outcome(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _drained(responses: AsyncIterable[bytes]) -> list[bytes]:
    return [response async for response in responses]


async def _every_kind_of_call(channel: grpc.aio.Channel) -> dict[str, grpc.StatusCode]:
    unary_unary: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Echo/UnaryUnary")
    unary_stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
        "/test.Echo/UnaryStream"
    )
    stream_unary: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
        "/test.Echo/StreamUnary"
    )
    stream_stream: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
        "/test.Echo/StreamStream"
    )
    return {
        "UnaryUnary": await _outcome(unary_unary(b"ping", timeout=10)),
        "UnaryStream": await _outcome(_drained(unary_stream(b"ping", timeout=10))),
        "StreamUnary": await _outcome(stream_unary(_requests(), timeout=10)),
        "StreamStream": await _outcome(_drained(stream_stream(_requests(), timeout=10))),
    }


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
async def test_every_kind_of_call_is_signed_and_checked(signed: bool) -> None:
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(), InternalAuthInterceptor(TokenVerifier(KEY, EMBEDDER.name))]
    )
    server.add_generic_rpc_handlers([ECHO])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    signing = signing_interceptors(TokenSigner(KEY), EMBEDDER.name) if signed else []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", interceptors=signing) as channel:
            outcomes = await _every_kind_of_call(channel)
    finally:
        await server.stop(None)

    expected = grpc.StatusCode.OK if signed else grpc.StatusCode.UNAUTHENTICATED
    assert outcomes == dict.fromkeys(["UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream"], expected)


# --- the local stack's key ---


def test_the_stack_writes_a_fresh_private_key_for_all_four(tmp_path: Path) -> None:
    stale = tmp_path / "internal-auth.key"
    stale.write_text("an old key, readable by anyone\n")
    stale.chmod(0o644)

    environment = Stack(data_dir=tmp_path).internal_auth_environment()

    assert set(environment) == {f"{service.env_prefix}INTERNAL_AUTH_KEY_FILE" for service in SERVICES}
    (key_file,) = {Path(path) for path in environment.values()}
    assert key_file == stale
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(read_key(key_file, SETTING)) >= MIN_KEY_BYTES
    assert "old key" not in key_file.read_text()


def test_each_key_written_is_new(tmp_path: Path) -> None:
    first = read_key(write_internal_auth_key(tmp_path), SETTING)
    assert read_key(write_internal_auth_key(tmp_path), SETTING) != first


# --- upstream failures at the gateway ---


async def test_an_upstream_connection_failure_names_the_dependency_not_its_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens
    tracer = TracerProvider().get_tracer(__name__)
    with tracer.start_as_current_span("Search") as span, caplog.at_level(logging.INFO, "gateway.upstream"):
        trace_id = format(span.get_span_context().trace_id, "032x")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            search: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/rag.retriever.v1.RetrieverService/Search"
            )
            with pytest.raises(Unavailable) as raised, calling("retriever"):
                await search(b"", timeout=10)

    public = raised.value.message
    raw = raised.value.__cause__
    assert isinstance(raw, grpc.aio.AioRpcError)
    assert str(port) in (raw.details() or ""), "the raw status names the address"
    assert public.startswith("retriever is unavailable: UNAVAILABLE")
    assert str(port) not in public
    assert "127.0.0.1" not in public
    assert trace_id in public
    (logged,) = [record.getMessage() for record in caplog.records]
    assert str(port) in logged
    assert trace_id in logged


async def test_an_upstream_service_s_own_message_reaches_the_caller() -> None:
    starting: Deferred[ChunkStore] = Deferred("the document store")
    request = retriever_pb2.SearchRequest(
        namespace="docs", query_text="whales", top_k=1, mode=common_pb2.SEARCH_MODE_KEYWORD
    )
    async with serving(RetrieverServicer(starting)) as retriever:
        with pytest.raises(ServiceError) as raised, calling("retriever"):
            await retriever.Search(request, timeout=10)

    assert isinstance(raised.value, Unavailable)
    assert (
        raised.value.message
        == "retriever is unavailable: the document store is still starting; retry shortly"
    )
