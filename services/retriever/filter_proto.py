"""rag.common.v1.MetadataFilter -> the retriever's filter types.

The limits of filters.py (depth, conditions, values per `in`) are checked while
converting, and the first excess ends the conversion: a filter of a million
conditions or a thousand levels costs as much as one just past the limit, and
nesting never reaches Python's recursion limit. As no group may be empty, every
node lies on the way to a condition, so at most MAX_CONDITIONS x MAX_DEPTH
nodes are ever built. What is inside the limits is then validated in full by
filters.validate_filter.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from google.protobuf import timestamp_pb2

from rag.common.v1 import common_pb2
from services.common.errors import InvalidArgument
from services.retriever import filters
from services.retriever.filters import MAX_CONDITIONS, MAX_DEPTH, MAX_IN_VALUES, Filter, Scalar


def filter_from_proto(message: common_pb2.MetadataFilter, field: str = "filter") -> Filter:
    return _Conversion(field).convert(message, field, depth=1)


class _Conversion:
    """One filter's conversion, counting its conditions as it goes."""

    def __init__(self, root: str) -> None:
        self._root = root
        self._conditions = 0
        self._values = 0

    def convert(self, message: common_pb2.MetadataFilter, field: str, depth: int) -> Filter:
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"filters may be nested at most {MAX_DEPTH} levels deep", field=field)
        kind = message.WhichOneof("kind")
        if kind == "field":
            self._count_condition()
            condition = _condition(message.field, f"{field}.field")
            self._count_values(filters.condition_values(condition))
            return condition
        if kind in ("all_of", "any_of"):
            group = message.all_of if kind == "all_of" else message.any_of
            if not group.filters:
                # Refused here, not only by validate_filter: so that every group holds
                # a condition, and counting conditions bounds the whole tree.
                raise InvalidArgument(
                    f"{field}.{kind} must hold at least one filter", field=f"{field}.{kind}"
                )
            children = tuple(
                self.convert(child, f"{field}.{kind}.filters[{i}]", depth + 1)
                for i, child in enumerate(group.filters)
            )
            return filters.AllOf(children) if kind == "all_of" else filters.AnyOf(children)
        if kind == "negate":
            return filters.Not(self.convert(message.negate, f"{field}.negate", depth + 1))
        raise InvalidArgument(f"{field} is empty; set one of field, all_of, any_of or negate", field=field)

    def _count_values(self, values: int) -> None:
        self._values += values
        if self._values > filters.MAX_VALUES:
            raise InvalidArgument(filters.too_many_values(self._root), field=self._root)

    def _count_condition(self) -> None:
        self._conditions += 1
        if self._conditions > MAX_CONDITIONS:
            raise InvalidArgument(
                f"{self._root} may hold at most {MAX_CONDITIONS} conditions, got more", field=self._root
            )


def _condition(condition: common_pb2.FieldCondition, field: str) -> Filter:
    key = condition.key
    kind = condition.WhichOneof("condition")
    if kind == "equals":
        return filters.FieldEquals(key, _scalar(condition.equals, f"{field}.equals"))
    if kind == "in_values":
        count = len(condition.in_values.values)
        if count > MAX_IN_VALUES:
            raise InvalidArgument(
                f"{field}.in_values must hold 1..{MAX_IN_VALUES} values, got {count}",
                field=f"{field}.in_values",
            )
        values = tuple(
            _scalar(v, f"{field}.in_values.values[{i}]") for i, v in enumerate(condition.in_values.values)
        )
        return filters.FieldIn(key, values)
    if kind == "number_range":
        r = condition.number_range
        return filters.NumberRange(
            key,
            gt=r.gt if r.HasField("gt") else None,
            gte=r.gte if r.HasField("gte") else None,
            lt=r.lt if r.HasField("lt") else None,
            lte=r.lte if r.HasField("lte") else None,
        )
    if kind == "time_range":
        t = condition.time_range
        return filters.TimeRange(
            key,
            gt=_time(t, "gt"),
            gte=_time(t, "gte"),
            lt=_time(t, "lt"),
            lte=_time(t, "lte"),
        )
    if kind == "exists":
        return filters.FieldExists(key, condition.exists)
    raise InvalidArgument(
        f"{field} has no condition; set equals, in_values, number_range, time_range or exists", field=field
    )


def _scalar(value: common_pb2.ScalarValue, field: str) -> Scalar:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    raise InvalidArgument(f"{field} is empty; set string_value, number_value or bool_value", field=field)


def _time(bounds: common_pb2.TimeRange, name: Literal["gt", "gte", "lt", "lte"]) -> datetime | None:
    if not bounds.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(bounds, name)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as error:
        raise InvalidArgument(
            f"time_range.{name} must be a valid timestamp between years 1 and 9999 "
            f"(seconds {stamp.seconds}, nanos {stamp.nanos})"
        ) from error
