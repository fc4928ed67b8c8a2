"""Request caps checked by the gateway before any work: metadata bytes and chat history.

The file caps are in tests/test_caps_parsing.py, the filter caps (the retriever's,
counted while converting) in tests/retriever/test_filters.py, and the same caps
through the running system in tests/e2e/test_caps.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from gateway import requests
from gateway.concurrency import Deadline
from gateway.config import GatewaySettings
from gateway.extraction import FileLimits, FileReader
from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from services.common.errors import InvalidArgument
from services.common.limits import (
    MAX_HISTORY_CHARS,
    MAX_HISTORY_TURN_CHARS,
    MAX_HISTORY_TURNS,
    MAX_METADATA_BYTES,
    metadata_json_bytes,
)
from services.common.struct_values import struct_to_dict

# {"k":"..."} is 8 bytes besides the value.
_OVERHEAD = len('{"k":""}')


def _document(metadata: dict[str, Any]) -> gateway_pb2.Document:
    struct = struct_pb2.Struct()
    struct.update(metadata)
    return gateway_pb2.Document(id="doc", text="Lamp bulbs.", metadata=struct)


async def _documents(
    settings: GatewaySettings, *documents: gateway_pb2.Document
) -> list[requests.IncomingDocument]:
    files = FileReader(FileLimits.from_settings(settings))
    return await requests.documents(documents, settings, files, Deadline(60))


async def test_metadata_at_the_limit_is_accepted() -> None:
    metadata = {"k": "x" * (MAX_METADATA_BYTES - _OVERHEAD)}

    [document] = await _documents(GatewaySettings(), _document(metadata))

    assert metadata_json_bytes(document.metadata) == MAX_METADATA_BYTES
    assert document.metadata == metadata


@pytest.mark.parametrize(
    ("settings", "value", "message"),
    [
        pytest.param(
            GatewaySettings(),
            "x" * (MAX_METADATA_BYTES - _OVERHEAD + 1),
            "documents[0].metadata is 16385 bytes as JSON; metadata of at most 16384 bytes as compact JSON"
            " is accepted (GATEWAY_MAX_METADATA_BYTES)",
            id="default",
        ),
        pytest.param(
            GatewaySettings(max_metadata_bytes=100),
            "é" * 50,  # 50 characters, 100 bytes
            "documents[0].metadata is 108 bytes as JSON; metadata of at most 100 bytes as compact JSON"
            " is accepted (GATEWAY_MAX_METADATA_BYTES)",
            id="lowered, counted in bytes",
        ),
        pytest.param(
            GatewaySettings(),
            [0] * 100_000,
            "documents[0].metadata is 1100015 bytes encoded, so more than 16384 as JSON; metadata of at"
            " most 16384 bytes as compact JSON is accepted (GATEWAY_MAX_METADATA_BYTES)",
            id="far too large on the wire",
        ),
    ],
)
async def test_metadata_over_the_limit_is_refused(
    settings: GatewaySettings, value: object, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$") as raised:
        await _documents(settings, _document({"k": value}))

    assert raised.value.field == "documents[0].metadata"


def test_the_metadata_limit_may_only_be_lowered() -> None:
    with pytest.raises(ValueError, match="max_metadata_bytes"):
        GatewaySettings(max_metadata_bytes=MAX_METADATA_BYTES + 1)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=4), children, max_size=6)
    ),
    max_leaves=40,
)


@given(st.dictionaries(st.text(max_size=4), _JSON_VALUES, max_size=6))
def test_metadata_on_the_wire_is_at_most_three_times_its_json(metadata: dict[str, Any]) -> None:
    """What lets the gateway refuse a Struct by its wire size before converting it."""
    struct = struct_pb2.Struct()
    struct.update(metadata)

    assert struct.ByteSize() <= 3 * metadata_json_bytes(struct_to_dict(struct, "metadata"))


def _turns(*contents: str) -> list[common_pb2.ChatTurn]:
    return [common_pb2.ChatTurn(role=common_pb2.CHAT_ROLE_USER, content=content) for content in contents]


def test_history_within_its_limits_is_accepted() -> None:
    full_turns = MAX_HISTORY_CHARS // MAX_HISTORY_TURN_CHARS
    requests.history(_turns(*["x" * MAX_HISTORY_TURN_CHARS] * full_turns), "history")
    requests.history(_turns(*[""] * MAX_HISTORY_TURNS), "history")


@pytest.mark.parametrize(
    ("contents", "field", "message"),
    [
        pytest.param(
            ["hi"] * (MAX_HISTORY_TURNS + 1),
            "history (count)",
            "history (count) must be 0..50, got 51",
            id="turns",
        ),
        pytest.param(
            ["hi", "x" * (MAX_HISTORY_TURN_CHARS + 1)],
            "history[1].content",
            "history[1].content must be at most 8000 characters, got 8001",
            id="one turn",
        ),
        pytest.param(
            ["x" * MAX_HISTORY_TURN_CHARS] * 4 + ["x"],
            "history",
            "history must hold at most 32000 characters in all, got 32001",
            id="characters in all",
        ),
    ],
)
def test_history_beyond_its_limits_is_refused(contents: list[str], field: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$") as raised:
        requests.history(_turns(*contents), "history")

    assert raised.value.field == field


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(gateway_pb2.Document(id="text", text="All work and no play. " * 5), id="text"),
        pytest.param(
            gateway_pb2.Document(id="bytes", utf8_content=b"All work and no play. " * 5), id="bytes"
        ),
    ],
)
async def test_a_document_over_the_text_limit_is_refused(document: gateway_pb2.Document) -> None:
    # The default (10 MiB) lies beyond the gateway's message limit, so the test lowers it.
    settings = GatewaySettings(max_document_bytes=100)

    with pytest.raises(InvalidArgument, match=r"is 110 bytes; documents of at most 100 bytes are accepted"):
        await _documents(settings, document)
