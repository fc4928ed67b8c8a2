"""The caps phase's requests: for each cap on what a caller may send, the largest request within it and
one just over it.

Every size is read from the code that enforces it (GatewaySettings' defaults
through benchkit.defaults, services/common/limits.py, the retriever's filter
rules), never retyped, so the requests follow the caps when they change.

The largest ingests carry as many bytes as the caps allow, but their text is
a word every PAD_CHARS characters (the rest spaces): a chunk of the
embedder's default size then stays within what the embedder embeds in one
text, and the model's work per byte stays small. Each is ingested once before
the phase (CapRequest.setup); during it the same documents come back
unchanged, so every call spends what the caps bound (receiving, decoding,
checking and hashing the request) and the phase stays within its deadline.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from benchkit.defaults import (
    CHUNK_TOKENS,
    EMBEDDER_MAX_TEXT_CHARS,
    GATEWAY_MAX_DOCUMENT_BYTES,
    GATEWAY_MAX_DOCUMENTS,
    GATEWAY_MAX_HTML_BYTES,
    GATEWAY_MAX_MESSAGE_BYTES,
    GATEWAY_MAX_METADATA_BYTES,
    GATEWAY_MAX_QUESTION_CHARS,
)
from rag.common.v1 import common_pb2
from rag.gateway.v1 import gateway_pb2
from reliability_bench.documents import WORDS, text
from services.common.limits import (
    MAX_HISTORY_CHARS,
    MAX_HISTORY_TURN_CHARS,
    MAX_HISTORY_TURNS,
    metadata_json_bytes,
)
from services.common.settings import MiB
from services.retriever.filters import MAX_CONDITIONS, MAX_DEPTH, MAX_IN_VALUES, MAX_VALUES

CAPS_NAMESPACE = "reliability-caps"

# A word, then spaces up to this many characters: a chunk of CHUNK_TOKENS one-token words spans
# less than the longest text the embedder takes in one piece.
PAD_CHARS = EMBEDDER_MAX_TEXT_CHARS // CHUNK_TOKENS - 1
# What a request holds beside its documents' text (ids, titles, framing), kept free under the message cap.
ENVELOPE_BYTES = 64 * 1024
HTML_PARAGRAPH_BYTES = 64 * 1024


@dataclass(frozen=True)
class CapRequest:
    """One request of the phase, serialized once and sent as it is by every client."""

    label: str
    # The GatewayService method.
    method: str
    payload: bytes
    # Within every cap: the gateway must serve it (or refuse it for load, RESOURCE_EXHAUSTED).
    within_caps: bool
    # Ingested once before the phase, so that during it the documents come back unchanged.
    setup: bool = False


def padded_text(size: int, seed: int) -> str:
    """`size` ASCII characters: a word every PAD_CHARS characters, spaces between."""
    words = itertools.cycle(WORDS[seed % len(WORDS) :] + WORDS[: seed % len(WORDS)])
    parts: list[str] = []
    left = size
    while left > 0:
        word = next(words)[:left]
        parts.append(word.ljust(min(PAD_CHARS, left)))
        left -= len(parts[-1])
    return "".join(parts)


def metadata(size: int) -> struct_pb2.Struct:
    """Metadata of exactly `size` bytes as compact JSON, the measure of the metadata cap."""
    padding = size - metadata_json_bytes({"pad": ""})
    struct = struct_pb2.Struct()
    struct.update({"pad": "x" * padding})
    return struct


def _documents(
    prefix: str, count: int, size: int, metadata_bytes: int | None = None
) -> list[gateway_pb2.Document]:
    return [
        gateway_pb2.Document(
            id=f"{prefix}-{i:04d}",
            title=f"{prefix} {i}",
            text=padded_text(size, i),
            metadata=None if metadata_bytes is None else metadata(metadata_bytes),
        )
        for i in range(count)
    ]


def html_file(size: int) -> gateway_pb2.File:
    """An HTML page of `size` bytes: a title, then paragraphs of padded text."""
    head = "<!doctype html><html><head><title>Caps</title></head><body>"
    tail = "</body></html>"
    body_size = size - len(head) - len(tail)
    count = math.ceil(body_size / HTML_PARAGRAPH_BYTES)
    # Paragraphs of equal size but for a byte, which together fill the body exactly.
    sizes = [body_size // count + (i < body_size % count) for i in range(count)]
    paragraphs = [f"<p>{padded_text(n - len('<p></p>'), i)}</p>" for i, n in enumerate(sizes)]
    content = (head + "".join(paragraphs) + tail).encode()
    return gateway_pb2.File(content=content, content_type="text/html", filename="caps.html")


def _ingest(documents: Sequence[gateway_pb2.Document]) -> gateway_pb2.IngestDocumentsRequest:
    return gateway_pb2.IngestDocumentsRequest(namespace=CAPS_NAMESPACE, documents=documents)


def _fitted_ingest(
    prefix: str, count: int, size: int, limit: int, metadata_bytes: int | None = None
) -> gateway_pb2.IngestDocumentsRequest:
    """`count` documents of `size` characters, or fewer where the request would pass `limit` bytes."""
    size = min(size, limit // count)
    request = _ingest(_documents(prefix, count, size, metadata_bytes))
    while (excess := request.ByteSize() - limit) > 0:
        size -= math.ceil(excess / count)
        request = _ingest(_documents(prefix, count, size, metadata_bytes))
    return request


def _request(
    label: str, method: str, message: Message, *, within_caps: bool, setup: bool = False
) -> CapRequest:
    return CapRequest(label, method, message.SerializeToString(), within_caps, setup)


def ingests() -> Iterator[CapRequest]:
    budget = GATEWAY_MAX_MESSAGE_BYTES - ENVELOPE_BYTES
    yield _request(
        f"ingest {GATEWAY_MAX_DOCUMENTS} documents",
        "IngestDocuments",
        _fitted_ingest("most", GATEWAY_MAX_DOCUMENTS, GATEWAY_MAX_DOCUMENT_BYTES, budget),
        within_caps=True,
        setup=True,
    )
    yield _request(
        "ingest largest document",
        "IngestDocuments",
        _fitted_ingest(
            "largest", 1, GATEWAY_MAX_DOCUMENT_BYTES, budget, metadata_bytes=GATEWAY_MAX_METADATA_BYTES
        ),
        within_caps=True,
        setup=True,
    )
    html = gateway_pb2.Document(id="largest-html", file=html_file(min(GATEWAY_MAX_HTML_BYTES, budget)))
    yield _request(
        "ingest largest HTML file", "IngestDocuments", _ingest([html]), within_caps=True, setup=True
    )
    yield _request(
        f"ingest {GATEWAY_MAX_DOCUMENTS + 1} documents",
        "IngestDocuments",
        _ingest(_documents("too-many", GATEWAY_MAX_DOCUMENTS + 1, PAD_CHARS)),
        within_caps=False,
    )
    yield _request(
        "ingest metadata bytes",
        "IngestDocuments",
        _ingest(_documents("too-much-metadata", 1, PAD_CHARS, GATEWAY_MAX_METADATA_BYTES + 1)),
        within_caps=False,
    )
    # Documents within their own cap whose sum passes the message cap.
    count = math.ceil((GATEWAY_MAX_MESSAGE_BYTES + 1) / GATEWAY_MAX_DOCUMENT_BYTES)
    yield _request(
        "ingest message bytes",
        "IngestDocuments",
        _ingest(_documents("too-big", count, math.ceil((GATEWAY_MAX_MESSAGE_BYTES + 1) / count))),
        within_caps=False,
    )
    # Caps the message cap hides: a request that passed them would pass it too.
    if budget > GATEWAY_MAX_DOCUMENT_BYTES:
        yield _request(
            "ingest document bytes",
            "IngestDocuments",
            _ingest(_documents("too-long", 1, GATEWAY_MAX_DOCUMENT_BYTES + 1)),
            within_caps=False,
        )
    if budget > GATEWAY_MAX_HTML_BYTES:
        too_big_html = gateway_pb2.Document(id="too-big-html", file=html_file(GATEWAY_MAX_HTML_BYTES + 1))
        yield _request(
            "ingest HTML file bytes", "IngestDocuments", _ingest([too_big_html]), within_caps=False
        )


def caps_in_force() -> str:
    """The caps the requests are sized to, for the phase's notes."""
    return (
        f"caps: message {GATEWAY_MAX_MESSAGE_BYTES / MiB:.0f} MiB, {GATEWAY_MAX_DOCUMENTS} documents,"
        f" metadata {GATEWAY_MAX_METADATA_BYTES} bytes, question {GATEWAY_MAX_QUESTION_CHARS} characters,"
        f" history {MAX_HISTORY_TURNS} turns / {MAX_HISTORY_TURN_CHARS} characters each /"
        f" {MAX_HISTORY_CHARS} in all, filter {MAX_CONDITIONS} conditions / {MAX_DEPTH} levels /"
        f" {MAX_IN_VALUES} values per condition / {MAX_VALUES} values in all"
    )


def hidden_caps() -> list[str]:
    """The caps past the message cap, which no request can meet alone."""
    budget = GATEWAY_MAX_MESSAGE_BYTES - ENVELOPE_BYTES
    caps = {"document": GATEWAY_MAX_DOCUMENT_BYTES, "HTML file": GATEWAY_MAX_HTML_BYTES}
    return [f"{name} {size / MiB:.0f} MiB" for name, size in caps.items() if size >= budget]


def _in_values(key: int, count: int = MAX_IN_VALUES) -> common_pb2.MetadataFilter:
    values = [common_pb2.ScalarValue(string_value=f"value-{i:03d}") for i in range(count)]
    return common_pb2.MetadataFilter(
        field=common_pb2.FieldCondition(key=f"key_{key}", in_values=common_pb2.ScalarList(values=values))
    )


def _nested(leaf: common_pb2.MetadataFilter, levels: int) -> common_pb2.MetadataFilter:
    """`leaf` under `levels` negations."""
    for _ in range(levels):
        leaf = common_pb2.MetadataFilter(negate=leaf)
    return leaf


def largest_filter(
    conditions: int = MAX_CONDITIONS, depth: int = MAX_DEPTH, values: int = MAX_VALUES
) -> common_pb2.MetadataFilter:
    """`conditions` `in` conditions under an any_of, one of them `depth` deep, comparing with `values`
    values in all: the deep one MAX_IN_VALUES of them, the others sharing the rest evenly."""
    # The any_of is level 1, its filters level 2; the deep one goes depth - 2 negations further.
    first = min(MAX_IN_VALUES, values - (conditions - 1))
    each, extra = divmod(values - first, conditions - 1)
    deep = _nested(_in_values(0, first), depth - 2)
    rest = [_in_values(key, each + (key <= extra)) for key in range(1, conditions)]
    return common_pb2.MetadataFilter(any_of=common_pb2.FilterList(filters=[deep, *rest]))


def question(chars: int) -> str:
    """A question of exactly `chars` characters, of words."""
    return text(random.Random(chars), chars // 2)[: chars - 1] + "?"


def _search(query: str, filter: common_pb2.MetadataFilter) -> gateway_pb2.SearchRequest:
    return gateway_pb2.SearchRequest(
        namespace=CAPS_NAMESPACE, query=query, retrieval=gateway_pb2.RetrievalOptions(filter=filter)
    )


def _ask(question_text: str, filter: common_pb2.MetadataFilter) -> gateway_pb2.AskRequest:
    return gateway_pb2.AskRequest(
        namespace=CAPS_NAMESPACE,
        question=question_text,
        retrieval=gateway_pb2.RetrievalOptions(filter=filter),
        skip_cache=True,
    )


def history(turns: int, turn_chars: int) -> list[common_pb2.ChatTurn]:
    """`turns` turns of `turn_chars` characters, the user's and the assistant's in turn."""
    roles = itertools.cycle((common_pb2.CHAT_ROLE_USER, common_pb2.CHAT_ROLE_ASSISTANT))
    return [common_pb2.ChatTurn(role=next(roles), content=question(turn_chars)) for _ in range(turns)]


# The most characters each turn may have when all MAX_HISTORY_TURNS are sent.
LARGEST_TURN_CHARS = min(MAX_HISTORY_TURN_CHARS, MAX_HISTORY_CHARS // MAX_HISTORY_TURNS)


def histories() -> Iterator[CapRequest]:
    """Ask with the history at its caps: turns, characters per turn, characters in all."""
    asked = question(GATEWAY_MAX_QUESTION_CHARS)

    def ask(label: str, turns: list[common_pb2.ChatTurn], *, within_caps: bool) -> CapRequest:
        request = _ask(asked, largest_filter())
        request.history.extend(turns)
        return _request(label, "Ask", request, within_caps=within_caps)

    yield ask("ask largest", history(MAX_HISTORY_TURNS, LARGEST_TURN_CHARS), within_caps=True)
    yield ask(
        "ask longest turns",
        history(MAX_HISTORY_CHARS // MAX_HISTORY_TURN_CHARS, MAX_HISTORY_TURN_CHARS),
        within_caps=True,
    )
    yield ask("history turns", history(MAX_HISTORY_TURNS + 1, 1), within_caps=False)
    yield ask("history turn chars", history(1, MAX_HISTORY_TURN_CHARS + 1), within_caps=False)
    over_all = math.ceil((MAX_HISTORY_CHARS + 1) / MAX_HISTORY_TURN_CHARS)
    yield ask(
        "history chars", history(over_all, math.ceil((MAX_HISTORY_CHARS + 1) / over_all)), within_caps=False
    )


def queries() -> Iterator[CapRequest]:
    largest = question(GATEWAY_MAX_QUESTION_CHARS)
    too_long = question(GATEWAY_MAX_QUESTION_CHARS + 1)
    yield _request("search largest", "Search", _search(largest, largest_filter()), within_caps=True)
    yield _request("search query chars", "Search", _search(too_long, largest_filter()), within_caps=False)
    yield _request("ask question chars", "Ask", _ask(too_long, largest_filter()), within_caps=False)
    yield _request(
        "filter conditions",
        "Search",
        _search(largest, largest_filter(conditions=MAX_CONDITIONS + 1)),
        within_caps=False,
    )
    yield _request(
        "filter depth",
        "Search",
        _search(largest, largest_filter(depth=MAX_DEPTH + 1)),
        within_caps=False,
    )
    too_many_values = _in_values(0)
    too_many_values.field.in_values.values.add(string_value="one more")
    yield _request("filter in_values", "Search", _search(largest, too_many_values), within_caps=False)
    yield _request(
        "filter values in all",
        "Search",
        _search(largest, largest_filter(values=MAX_VALUES + 1)),
        within_caps=False,
    )


CATALOGUE: tuple[Callable[[], Iterator[CapRequest]], ...] = (ingests, histories, queries)


def cap_requests() -> list[CapRequest]:
    """Every request of the phase, the largest within the caps first."""
    requests = [request for family in CATALOGUE for request in family()]
    return sorted(requests, key=lambda request: not request.within_caps)
