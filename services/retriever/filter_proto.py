"""rag.common.v1.MetadataFilter -> the retriever's filter types."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from google.protobuf import timestamp_pb2

from rag.common.v1 import common_pb2
from services.common.errors import InvalidArgument
from services.retriever import filters
from services.retriever.filters import Filter, Scalar


def filter_from_proto(message: common_pb2.MetadataFilter, field: str = "filter") -> Filter:
    kind = message.WhichOneof("kind")
    if kind == "field":
        return _condition(message.field, f"{field}.field")
    if kind in ("all_of", "any_of"):
        group = message.all_of if kind == "all_of" else message.any_of
        children = tuple(
            filter_from_proto(child, f"{field}.{kind}.filters[{i}]") for i, child in enumerate(group.filters)
        )
        return filters.AllOf(children) if kind == "all_of" else filters.AnyOf(children)
    if kind == "negate":
        return filters.Not(filter_from_proto(message.negate, f"{field}.negate"))
    raise InvalidArgument(f"{field} is empty; set one of field, all_of, any_of or negate", field=field)


def _condition(condition: common_pb2.FieldCondition, field: str) -> Filter:
    key = condition.key
    kind = condition.WhichOneof("condition")
    if kind == "equals":
        return filters.FieldEquals(key, _scalar(condition.equals, f"{field}.equals"))
    if kind == "in_values":
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
