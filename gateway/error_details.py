"""A dependency's rich error details, told in the terms of the gateway's own caller.

Our services attach a google.rpc.Status to every refusal
(services/common/errors_interceptor.py): a google.rpc.BadRequest naming the
field at fault in *their* request, and a google.rpc.RetryInfo (with gRPC's
grpc-retry-pushback-ms beside it) when the caller may try again after a while.
The gateway's caller never sees an inner request, so on the way out:

- a field violation is renamed to the gateway request field its value came
  from: the retriever's `ef_search` is the caller's `retrieval.ef_search` in
  Search and Ask, `request.retrieval.ef_search` in AskStream; a message that
  begins with the inner name is reworded to begin with the caller's. A field
  the gateway filled in itself (the query embedding, a generator's context
  chunk, a batch of chunks to embed) is nothing the caller can change, so that
  violation is dropped and only the message goes on;
- a retry hint means the same on either side of the hop and goes on as it is.

Which gateway field each inner field came from is decided by the code that
builds the inner request (gateway/query.py, gateway/ingest.py); it is written
down once, here, as the FieldOrigins of each inner call, and
tests/test_error_details.py checks every path on both sides against the
protos, so a renamed field cannot leave a stale entry behind.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from services.common.errors_interceptor import RETRY_PUSHBACK_KEY, STATUS_DETAILS_KEY

log = logging.getLogger(__name__)

# What may follow a field's name in a longer path under it: "filter.any_of",
# "texts[3]", "document_ids (count)".
_PATH_CONTINUATIONS = ".[ "

Metadata = tuple[tuple[str, str | bytes], ...]
Detail = TypeVar("Detail", bound=Message)


@dataclass(frozen=True)
class FieldOrigins:
    """Where the fields of one inner request came from: inner field path -> gateway request path.

    A path stands for its field and everything under it: "filter" also maps
    "filter.all_of.filters[0].field.key". An inner field not listed was filled
    in by the gateway.
    """

    paths: Mapping[str, str] = field(default_factory=dict)

    def under(self, prefix: str) -> FieldOrigins:
        """The same origins in a gateway request that holds them at `prefix` (AskStream's "request.")."""
        return FieldOrigins({inner: prefix + outer for inner, outer in self.paths.items()})

    def gateway_path(self, inner: str) -> str | None:
        """The gateway request path of the inner field path `inner`; None for a field the gateway made."""
        # Longest first, so a listed sub-path wins over the field it lies in.
        for name in sorted(self.paths, key=len, reverse=True):
            if inner == name or (inner.startswith(name) and inner[len(name)] in _PATH_CONTINUATIONS):
                return self.paths[name] + inner[len(name) :]
        return None


# An inner call whose request the gateway made up entirely, or whose fields the
# gateway checks itself first (ingest's: every document field is checked in
# gateway/requests.py before any inner call).
GATEWAY_MADE = FieldOrigins()


@dataclass(frozen=True)
class QueryOrigins:
    """The origins of the inner requests of one query RPC (Search, Ask, AskStream), one per inner call."""

    # embedder.Embed of the query text.
    embed: FieldOrigins
    # retriever.Search.
    search: FieldOrigins
    # retriever.GetIndexVersion, for the answer cache.
    index_version: FieldOrigins
    # generator.Generate in Ask, generator.GenerateStream in AskStream; Search generates nothing.
    generate: FieldOrigins = GATEWAY_MADE


def _query_origins(text: str, prefix: str = "", generate: str | None = None) -> QueryOrigins:
    """The origins for a gateway request with the query text in `text` and the rest under `prefix`;
    `generate`: where the generator's request holds the question ("" for Generate's, "request."
    for GenerateStream's), None when the RPC generates nothing."""
    search = {
        "namespace": "namespace",
        "query_text": text,
        "top_k": "retrieval.top_k",
        "mode": "retrieval.mode",
        "filter": "retrieval.filter",
        "fusion": "retrieval.fusion",
        "rerank": "retrieval.rerank",
        "ef_search": "retrieval.ef_search",
    }
    generated = {"question": text, "history": "history", "options": "generation"}
    return QueryOrigins(
        embed=FieldOrigins({"texts[0]": text}).under(prefix),
        search=FieldOrigins(search).under(prefix),
        index_version=FieldOrigins({"namespace": "namespace"}).under(prefix),
        generate=(
            GATEWAY_MADE
            if generate is None
            else FieldOrigins({generate + inner: outer for inner, outer in generated.items()}).under(prefix)
        ),
    )


SEARCH = _query_origins("query")
ASK = _query_origins("question", generate="")
ASK_STREAM = _query_origins("question", prefix="request.", generate="request.")

# DeleteDocuments and ListDocuments pass their fields on under the same names.
DELETE = FieldOrigins({"namespace": "namespace", "document_ids": "document_ids", "filter": "filter"})
LIST = FieldOrigins(
    {"namespace": "namespace", "state": "state", "page_size": "page_size", "page_token": "page_token"}
)
# So do SubmitFeedback and ListFeedback.
SUBMIT_FEEDBACK = FieldOrigins(
    {"namespace": "namespace", "question": "question", "items": "items", "answer_rating": "answer_rating"}
)
LIST_FEEDBACK = FieldOrigins({"namespace": "namespace", "page_size": "page_size", "page_token": "page_token"})


@dataclass(frozen=True)
class CallerDetails:
    """What a dependency's refusal said beyond its code and message, in the gateway caller's terms."""

    # The gateway request field at fault, and the inner one it was reported as.
    field: str | None = None
    inner_field: str | None = None
    # When the caller may try again.
    retry_after_ms: int | None = None

    def reworded(self, message: str) -> str:
        """`message` beginning with the caller's field name where it began with the inner one."""
        if self.field is None or self.inner_field is None or not message.startswith(self.inner_field):
            return message
        return self.field + message[len(self.inner_field) :]


def caller_details(error: grpc.aio.AioRpcError, origins: FieldOrigins) -> CallerDetails:
    """The field violation and retry hint of a dependency's status, as the gateway's caller should get them.

    Only the first field violation is kept: our services name one field per
    refusal, and so does the status the gateway sends on (ServiceError.field).
    """
    trailing = tuple(error.trailing_metadata() or ())
    status = _status(error, trailing)
    bad_request = _first(status, error_details_pb2.BadRequest())
    retry_info = _first(status, error_details_pb2.RetryInfo())
    inner_field = (
        bad_request.field_violations[0].field
        if bad_request is not None and bad_request.field_violations
        else None
    )
    outer_field = None if inner_field is None else origins.gateway_path(inner_field)
    retry_after_ms = _pushback_ms(trailing)
    if retry_info is not None and retry_info.HasField("retry_delay"):
        delay_ms = retry_info.retry_delay.ToMilliseconds()
        # A delay in the past is no hint to wait.
        retry_after_ms = delay_ms if delay_ms >= 0 else None
    return CallerDetails(
        field=outer_field,
        inner_field=inner_field if outer_field is not None else None,
        retry_after_ms=retry_after_ms,
    )


def _status(error: grpc.aio.AioRpcError, trailing: Metadata) -> status_pb2.Status:
    """The google.rpc.Status the dependency attached; empty when it attached none or one that does not fit."""
    for key, value in trailing:
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            log.warning("a dependency's %s could not be decoded; its details are dropped", STATUS_DETAILS_KEY)
            return status_pb2.Status()
        # As grpc_status.rpc_status.from_call insists: details of another status are not this one's.
        if status.code != error.code().value[0]:
            log.warning(
                "a dependency's status details are for code %d, not %s", status.code, error.code().name
            )
            return status_pb2.Status()
        return status
    return status_pb2.Status()


def _first(status: status_pb2.Status, empty: Detail) -> Detail | None:
    """The status's first detail of `empty`'s type, unpacked into `empty`; None when it has none."""
    for packed in status.details:
        if packed.Unpack(empty):
            return empty
    return None


def _pushback_ms(trailing: Metadata) -> int | None:
    """gRPC's pushback, where a status carries it without a RetryInfo. gRPC reads anything but a
    whole number of milliseconds as "do not retry": that is no hint to pass on."""
    for key, value in trailing:
        if key == RETRY_PUSHBACK_KEY and isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)
    return None
