"""Metadata filters: validation, what the compiled SQL may contain, and what matches in PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import numpy as np
import pytest

from rag.common.v1 import common_pb2
from services.common.errors import InvalidArgument
from services.retriever.filter_proto import filter_from_proto
from services.retriever.filters import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_IN_VALUES,
    MAX_VALUES,
    AllOf,
    AnyOf,
    FieldEquals,
    FieldExists,
    FieldIn,
    Filter,
    Not,
    NumberRange,
    TimeRange,
    compile_filter,
)
from services.retriever.store import ChunkStore
from services.retriever.store.records import ChunkInput, DocumentInput
from tests.retriever.conftest import DIMENSION

DROP = "'; DROP TABLE rag_chunks; --"
# What an untyped caller (JSON, a proto Value) could pass where a scalar belongs.
NOT_A_SCALAR_LIST: Any = ["a"]
NOT_A_SCALAR_NONE: Any = None
HOSTILE_VALUES = [
    DROP,
    'it\'s "quoted" \\ back\\',
    "$1",
    "$2::text",
    "日本語 ✓",
    "a\nb",
    "?",
    "' OR 1=1 --",
    "}{",
]


def nested_not(filter: Filter, times: int) -> Filter:
    for _ in range(times):
        filter = Not(filter)
    return filter


# What the SQL text may contain


def shaped_filter(keys: list[str], values: list[str], number: float, moment: datetime) -> Filter:
    return AllOf(
        (
            AnyOf(tuple(FieldEquals(keys[0], value) for value in values)),
            FieldIn(keys[1], tuple(values)),
            NumberRange(keys[2], gte=number, lt=number * 2),
            TimeRange(keys[3], gt=moment),
            Not(FieldExists(keys[4])),
        )
    )


def test_keys_and_values_reach_sql_only_as_placeholders() -> None:
    hostile_params: list[object] = []
    hostile = compile_filter(
        shaped_filter(["lang", "tag", "year", "published", "draft"], HOSTILE_VALUES, 2000, datetime.now(UTC)),
        hostile_params,
    )
    plain_params: list[object] = []
    plain = compile_filter(
        shaped_filter(
            ["a", "b", "c", "d", "e"], ["x"] * len(HOSTILE_VALUES), 1, datetime(1970, 1, 1, tzinfo=UTC)
        ),
        plain_params,
    )

    # The SQL depends on the filter's shape alone, never on its keys or values.
    assert hostile == plain
    assert "DROP" not in hostile
    # Every $n names a parameter that exists.
    placeholders = {int(n) for n in re.findall(r"\$(\d+)", hostile)}
    assert placeholders == set(range(1, len(hostile_params) + 1))
    assert DROP in str(hostile_params)


def test_placeholders_continue_after_the_callers_parameters() -> None:
    params: list[object] = ["namespace", "embedding", 10]

    sql = compile_filter(FieldExists("lang"), params, "c.metadata")

    assert sql == "(c.metadata ? $4::text)"
    assert params == ["namespace", "embedding", 10, "lang"]


@pytest.mark.parametrize(
    ("value", "document"),
    [
        (True, '{"x": true}'),
        (1, '{"x": 1}'),
        (1.5, '{"x": 1.5}'),
        ("1", '{"x": "1"}'),
        (DROP, '{"x": "\'; DROP TABLE rag_chunks; --"}'),
    ],
)
def test_equality_keeps_the_json_type_of_the_value(value: Any, document: str) -> None:
    params: list[object] = []
    compile_filter(FieldEquals("x", value), params)
    assert params == [document]


def test_the_column_must_be_an_identifier() -> None:
    with pytest.raises(ValueError, match="column must be an SQL identifier"):
        compile_filter(FieldExists("a"), [], "metadata; DROP TABLE rag_chunks")


# Validation


@pytest.mark.parametrize(
    "key",
    [DROP, "a'b", 'a"b', "a\\b", "$1", "ключ", "", "x" * 65, "a b", "a\x00b", "a;b", "a->b", "a?b"],
)
def test_hostile_or_malformed_keys_are_refused(key: str) -> None:
    for leaf in (FieldEquals(key, "v"), FieldExists(key), NumberRange(key, gt=1)):
        params: list[object] = ["kept"]
        with pytest.raises(InvalidArgument, match="key must be letters, digits") as raised:
            compile_filter(leaf, params)
        assert raised.value.field == "filter.field.key"
        assert params == ["kept"]


def test_the_error_names_the_place_of_the_bad_condition() -> None:
    filter = AllOf((FieldEquals("ok", 1), AnyOf((FieldExists("fine"), Not(FieldEquals("bad key", 1))))))
    with pytest.raises(InvalidArgument) as raised:
        compile_filter(filter, [])
    assert raised.value.field == "filter.all_of.filters[1].any_of.filters[1].negate.field.key"


def test_keys_at_the_limits_are_accepted() -> None:
    for key in ["a", "x" * 64, "Meta.sub-key_2"]:
        compile_filter(FieldExists(key), [])


@pytest.mark.parametrize(
    ("filter", "message"),
    [
        (FieldIn("k", ()), "filter.field.in_values must hold 1..100 values, got 0"),
        (FieldIn("k", tuple(range(101))), "filter.field.in_values must hold 1..100 values, got 101"),
        (NumberRange("k"), "filter.field.number_range must set at least one of gt, gte, lt, lte"),
        (NumberRange("k", gt=float("nan")), "filter.field.number_range.gt must be a finite number"),
        (NumberRange("k", lte=float("inf")), "filter.field.number_range.lte must be a finite number"),
        (NumberRange("k", gt=True), "filter.field.number_range.gt must be a finite number"),
        (TimeRange("k"), "filter.field.time_range must set at least one of gt, gte, lt, lte"),
        (TimeRange("k", lt=datetime(2024, 1, 1)), "filter.field.time_range.lt must be a timezone-aware"),
        (FieldEquals("k", float("nan")), "filter.field.equals must be a finite number"),
        (FieldEquals("k", NOT_A_SCALAR_LIST), "filter.field.equals must be a string, number or bool"),
        (FieldEquals("k", NOT_A_SCALAR_NONE), "filter.field.equals must be a string, number or bool"),
        (FieldEquals("k", "nul\x00"), "filter.field.equals must not contain NUL"),
        (FieldIn("k", ("a", float("inf"))), "filter.field.in_values.values[1] must be a finite number"),
        (AllOf(()), "filter.all_of must hold at least one filter"),
        (AnyOf(()), "filter.any_of must hold at least one filter"),
        (nested_not(FieldExists("k"), 8), "filters may be nested at most 8 levels deep"),
        (
            AnyOf(tuple(FieldExists(f"k{i}") for i in range(MAX_CONDITIONS + 1))),
            "filter may hold at most 64 conditions, got 65",
        ),
        (
            AllOf((AnyOf(tuple(FieldExists(f"k{i}") for i in range(40))),) * 2),
            "filter may hold at most 64 conditions",
        ),
    ],
)
def test_invalid_filters_are_refused(filter: Filter, message: str) -> None:
    params: list[object] = []
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        compile_filter(filter, params)
    assert params == []


def test_filters_at_the_limits_are_accepted() -> None:
    compile_filter(nested_not(FieldExists("k"), 7), [])  # depth 8
    compile_filter(AnyOf(tuple(FieldExists(f"k{i}") for i in range(MAX_CONDITIONS))), [])
    compile_filter(FieldIn("k", tuple(range(100))), [])


# Filters as they arrive: converted from the proto, counted and measured on the way


def _exists(key: str) -> common_pb2.MetadataFilter:
    return common_pb2.MetadataFilter(field=common_pb2.FieldCondition(key=key, exists=True))


def _negated(leaf: common_pb2.MetadataFilter, times: int) -> common_pb2.MetadataFilter:
    """`leaf` under `times` negations, built from the outside in (a copy would recurse)."""
    root = common_pb2.MetadataFilter()
    innermost = root
    for _ in range(times):
        innermost = innermost.negate
    innermost.CopyFrom(leaf)
    return root


def test_a_filter_of_100000_conditions_is_refused_at_the_first_condition_too_many() -> None:
    # Past the limit the conditions are empty, which would be refused as such if they were converted.
    conditions = [_exists(f"k{i}") for i in range(MAX_CONDITIONS + 1)]
    conditions += [common_pb2.MetadataFilter()] * (100_000 - len(conditions))
    message = common_pb2.MetadataFilter(any_of=common_pb2.FilterList(filters=conditions))

    with pytest.raises(InvalidArgument, match=r"^filter may hold at most 64 conditions, got more$"):
        filter_from_proto(message)


def test_a_filter_10000_levels_deep_is_refused_at_the_first_level_too_deep() -> None:
    # The innermost filter is empty, which would be refused as such if it were reached.
    message = _negated(common_pb2.MetadataFilter(), 10_000)

    with pytest.raises(InvalidArgument, match=r"^filters may be nested at most 8 levels deep$") as raised:
        filter_from_proto(message)
    assert raised.value.field == "filter" + ".negate" * MAX_DEPTH


def test_an_in_condition_with_a_million_values_is_refused_before_they_are_converted() -> None:
    # The values are empty, which would be refused as such if they were converted.
    values = [common_pb2.ScalarValue()] * 1_000_000
    message = common_pb2.MetadataFilter(
        field=common_pb2.FieldCondition(key="k", in_values=common_pb2.ScalarList(values=values))
    )

    with pytest.raises(
        InvalidArgument, match=r"^filter\.field\.in_values must hold 1\.\.100 values, got 1000000$"
    ):
        filter_from_proto(message)


def test_an_empty_group_is_refused_before_the_filters_after_it_are_converted() -> None:
    # The second filter is empty too, and would be refused as such if it were reached.
    empty_group = common_pb2.MetadataFilter(all_of=common_pb2.FilterList())
    message = common_pb2.MetadataFilter(
        any_of=common_pb2.FilterList(filters=[empty_group, common_pb2.MetadataFilter()])
    )

    with pytest.raises(
        InvalidArgument, match=r"^filter\.any_of\.filters\[0\]\.all_of must hold at least one filter$"
    ):
        filter_from_proto(message)


def test_converted_filters_at_the_limits_are_accepted() -> None:
    deepest = filter_from_proto(_negated(_exists("k"), MAX_DEPTH - 1))
    widest = filter_from_proto(
        common_pb2.MetadataFilter(
            all_of=common_pb2.FilterList(filters=[_exists(f"k{i}") for i in range(MAX_CONDITIONS)])
        )
    )

    assert deepest == nested_not(FieldExists("k"), MAX_DEPTH - 1)
    assert widest == AllOf(tuple(FieldExists(f"k{i}") for i in range(MAX_CONDITIONS)))
    compile_filter(deepest, [])
    compile_filter(widest, [])


# What matches, in PostgreSQL

NAMESPACE = "filter-semantics"
UTC_PLUS_2 = timezone(timedelta(hours=2))
METADATA: dict[str, dict[str, Any]] = {
    "en": {"lang": "en", "year": 2020, "score": 0.1, "draft": False, "published": "2024-01-15T10:00:00Z"},
    "fr": {"lang": "fr", "year": "2020", "score": 0.5, "draft": True, "published": "2024-02-30"},
    "de": {"lang": "de", "year": 2021.0, "score": 1, "big": 10**400, "published": "now", "tags": ["a", "b"]},
    "evil": {"lang": DROP, "year": 1, "published": "2024-03-01", "note": None, "quote": HOSTILE_VALUES[1]},
    "uni": {"lang": "日本語 ✓", "year": True, "published": "2024-01-15T12:00:00+02:00", "dollar": "$1"},
    "empty": {},
}
ALL = set(METADATA)


@pytest.fixture(scope="module")
async def filter_store(store: ChunkStore) -> ChunkStore:
    vectors = np.random.default_rng(3).standard_normal((len(METADATA), DIMENSION)).astype(np.float32)
    await store.upsert(
        NAMESPACE,
        [
            DocumentInput(document_id, "h", "", metadata, [ChunkInput(0, document_id, vector, 0, 1)])
            for (document_id, metadata), vector in zip(METADATA.items(), vectors, strict=True)
        ],
    )
    return store


async def matching(store: ChunkStore, filter: Filter) -> set[str]:
    hits = await store.search_dense(NAMESPACE, np.ones(DIMENSION), 100, filter=filter)
    return {hit.document_id for hit in hits}


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        (FieldEquals("lang", "en"), {"en"}),
        (FieldEquals("lang", "EN"), set()),
        (FieldEquals("year", 2020), {"en"}),  # not the string "2020", not true
        (FieldEquals("year", "2020"), {"fr"}),
        (FieldEquals("year", 2021), {"de"}),  # 2021.0 is the same number
        (FieldEquals("year", True), {"uni"}),
        (FieldEquals("year", 1), {"evil"}),  # true is not 1
        (FieldEquals("draft", False), {"en"}),
        (FieldEquals("tags", "a"), set()),  # a list is not its element
        (FieldEquals("lang", DROP), {"evil"}),
        (FieldEquals("quote", HOSTILE_VALUES[1]), {"evil"}),
        (FieldEquals("lang", "日本語 ✓"), {"uni"}),
        (FieldEquals("dollar", "$1"), {"uni"}),
        (FieldIn("lang", ("en", "fr", "xx")), {"en", "fr"}),
        (FieldIn("year", (2020, "2020")), {"en", "fr"}),
        (FieldIn("lang", tuple(HOSTILE_VALUES)), {"evil", "uni"}),
        (NumberRange("year", gte=2020), {"en", "de"}),  # strings and bools are not numbers
        (NumberRange("year", lt=2020), {"evil"}),
        (NumberRange("score", gt=0.1), {"fr", "de"}),
        (NumberRange("score", gte=0.1, lte=0.5), {"en", "fr"}),
        (NumberRange("big", gt=1e300), {"de"}),  # beyond float8, and no overflow
        (NumberRange("big", gte=10**400), {"de"}),
        (NumberRange("big", gt=10**400), set()),
        (FieldEquals("big", 10**400), {"de"}),
        (NumberRange("lang", gt=0), set()),
        (TimeRange("published", gte=datetime(2024, 1, 15, 10, tzinfo=UTC)), {"en", "evil", "uni"}),
        (TimeRange("published", gt=datetime(2024, 1, 15, 12, tzinfo=UTC_PLUS_2)), {"evil"}),
        (TimeRange("published", lt=datetime(2024, 2, 1, tzinfo=UTC)), {"en", "uni"}),
        (
            TimeRange(
                "published", gte=datetime(2024, 3, 1, tzinfo=UTC), lte=datetime(2024, 3, 1, tzinfo=UTC)
            ),
            {"evil"},
        ),
        (TimeRange("lang", gt=datetime(1970, 1, 1, tzinfo=UTC)), set()),
        (FieldExists("note"), {"evil"}),  # present with a null value
        (FieldExists("note", exists=False), ALL - {"evil"}),
        (FieldExists("missing"), set()),
        (AllOf((FieldEquals("lang", "en"), NumberRange("year", gte=2000))), {"en"}),
        (AllOf((FieldEquals("lang", "en"), NumberRange("year", gte=2021))), set()),
        (AnyOf((FieldEquals("lang", "fr"), FieldExists("big"))), {"fr", "de"}),
        (Not(FieldEquals("lang", "en")), ALL - {"en"}),
        (Not(NumberRange("year", gte=2020)), ALL - {"en", "de"}),
        (Not(TimeRange("published", lt=datetime(2024, 2, 1, tzinfo=UTC))), ALL - {"en", "uni"}),
        (nested_not(FieldExists("dollar"), 2), {"uni"}),
    ],
    ids=repr,
)
async def test_filters_match_in_postgresql(
    filter_store: ChunkStore, db: asyncpg.Connection, filter: Filter, expected: set[str]
) -> None:
    assert await matching(filter_store, filter) == expected
    assert await db.fetchval("SELECT to_regclass('rag_chunks') IS NOT NULL")


async def test_hostile_values_in_a_delete_are_plain_data(
    store: ChunkStore, db: asyncpg.Connection, namespace: str
) -> None:
    vector = np.ones(DIMENSION)
    await store.upsert(
        namespace,
        [
            DocumentInput("evil", "h", "", {"lang": DROP}, [ChunkInput(0, "x", vector, 0, 1)]),
            DocumentInput("plain", "h", "", {"lang": "en"}, [ChunkInput(0, "y", vector, 0, 1)]),
        ],
    )

    assert await store.delete(namespace, [DROP], filter=FieldIn("lang", tuple(HOSTILE_VALUES))) == (1, 1)

    assert await db.fetchval("SELECT to_regclass('rag_chunks') IS NOT NULL")
    assert await store.content_hashes(namespace, ["evil", "plain"]) == {"plain": "h"}


def _in(key: str, count: int) -> common_pb2.MetadataFilter:
    values = [common_pb2.ScalarValue(number_value=i) for i in range(count)]
    return common_pb2.MetadataFilter(
        field=common_pb2.FieldCondition(key=key, in_values=common_pb2.ScalarList(values=values))
    )


def test_a_filter_comparing_with_more_values_than_allowed_in_all_is_refused_both_ways() -> None:
    # Three full `in` lists: each within its own limit, together past MAX_VALUES.
    full = -(-(MAX_VALUES + 1) // MAX_IN_VALUES)
    message = common_pb2.MetadataFilter(
        any_of=common_pb2.FilterList(filters=[_in(f"k{i}", MAX_IN_VALUES) for i in range(full)])
    )
    refused = rf"^filter may compare with at most {MAX_VALUES} values in all"

    with pytest.raises(InvalidArgument, match=refused + r".*got more$"):
        filter_from_proto(message)
    built = AnyOf(tuple(FieldIn(f"k{i}", tuple(range(MAX_IN_VALUES))) for i in range(full)))
    with pytest.raises(InvalidArgument, match=refused + rf".*got {full * MAX_IN_VALUES}$"):
        compile_filter(built, [])


def test_a_filter_comparing_with_exactly_the_values_allowed_is_accepted() -> None:
    lists, rest = divmod(MAX_VALUES, MAX_IN_VALUES)
    filters = [_in(f"k{i}", MAX_IN_VALUES) for i in range(lists)] + [_in("last", rest)]
    converted = filter_from_proto(common_pb2.MetadataFilter(any_of=common_pb2.FilterList(filters=filters)))

    compile_filter(converted, [])
