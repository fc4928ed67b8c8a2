"""Typed metadata filters and their compilation to parameterised SQL.

The types mirror `rag.common.v1.MetadataFilter` without importing generated
code; the servicer converts. `compile_filter` turns a filter into a boolean SQL
expression over a jsonb column. Nothing that came from the caller is ever
written into the SQL text: keys and values travel as `$n` parameters, so a
hostile key or value is data, never syntax. Keys are validated anyway, so a
caller learns early that a key can never match.

Every leaf compiles to an expression that is true or false, never NULL and
never an SQL error, whatever the stored metadata holds (a string where a number
is expected, a malformed date, a missing key). That keeps `Not` honest and lets
one odd document not break a whole search.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias, TypeVar

from services.common.errors import InvalidArgument

Scalar = str | float | bool
"""A metadata value a filter compares with. `bool` is never treated as a number."""


@dataclass(frozen=True, slots=True)
class FieldEquals:
    """The value at `key` equals `value`, type included ("1" does not equal 1, true does not equal 1)."""

    key: str
    value: Scalar


@dataclass(frozen=True, slots=True)
class FieldIn:
    """The value at `key` equals one of `values`."""

    key: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class NumberRange:
    """The value at `key` is a JSON number within the bounds; unset bounds are open."""

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True, slots=True)
class TimeRange:
    """The value at `key` is an ISO-8601 date or timestamp string within the (timezone-aware) bounds.

    A stored string without a UTC offset is read in the session time zone, which
    the store pins to UTC.
    """

    key: str
    gt: datetime | None = None
    gte: datetime | None = None
    lt: datetime | None = None
    lte: datetime | None = None


@dataclass(frozen=True, slots=True)
class FieldExists:
    """`key` is present (even with a JSON null) when `exists`, absent otherwise."""

    key: str
    exists: bool = True


@dataclass(frozen=True, slots=True)
class AllOf:
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    filter: Filter


Filter: TypeAlias = FieldEquals | FieldIn | NumberRange | TimeRange | FieldExists | AllOf | AnyOf | Not

KEY_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
KEY_RULE = "letters, digits, '_', '-' and '.', 1..64 characters"
MAX_IN_VALUES = 100
MAX_DEPTH = 8
MAX_CONDITIONS = 64
# Values a whole filter compares metadata with: one per condition, an `in` one per
# value. Each is a jsonb test on every candidate row of every leg, so this bounds
# what a filter adds to a search (64 x 100 values made one search take seconds).
MAX_VALUES = 256

# Only ISO-8601 shapes reach the timestamptz cast. PostgreSQL also accepts words
# such as 'now', 'today' or 'epoch', whose meaning would drift with the clock;
# pg_input_is_valid (PostgreSQL 16+) then rejects impossible dates like Feb 30
# without raising. Written without backslashes, so it means the same whatever
# standard_conforming_strings says.
_ISO_8601 = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    "([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?$"
)
_T = TypeVar("_T")
_COLUMN_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def validate_filter(filter: Filter, *, field: str = "filter") -> None:
    """Raise InvalidArgument if `filter` breaks a rule; `field` names its place in the request."""
    conditions = _validate(filter, field, depth=1)
    if conditions > MAX_CONDITIONS:
        raise InvalidArgument(
            f"{field} may hold at most {MAX_CONDITIONS} conditions, got {conditions}", field=field
        )
    values = _values(filter)
    if values > MAX_VALUES:
        raise InvalidArgument(too_many_values(field, values), field=field)


def too_many_values(field: str, values: int | None = None) -> str:
    got = "more" if values is None else values
    return f"{field} may compare with at most {MAX_VALUES} values in all (an `in` counts each), got {got}"


def condition_values(leaf: Filter) -> int:
    """How many values a leaf condition compares with."""
    return len(leaf.values) if isinstance(leaf, FieldIn) else 1


def _values(filter: Filter) -> int:
    if isinstance(filter, AllOf | AnyOf):
        return sum(_values(child) for child in filter.filters)
    if isinstance(filter, Not):
        return _values(filter.filter)
    return condition_values(filter)


def compile_filter(
    filter: Filter, params: list[object], column: str = "metadata", *, field: str = "filter"
) -> str:
    """Compile `filter` into an SQL boolean expression over the jsonb `column`.

    Values are appended to `params`; placeholders continue from `len(params)`,
    so the caller's own parameters can come first. The filter is validated
    before anything is appended: on InvalidArgument `params` is unchanged.
    `column` is SQL written by our code, never by a caller.
    """
    if not _COLUMN_PATTERN.fullmatch(column):
        raise ValueError(f"column must be an SQL identifier, optionally qualified; got {column!r}")
    validate_filter(filter, field=field)
    return _Compiler(params, column).compile(filter)


# Validation


def _validate(filter: Filter, field: str, depth: int) -> int:
    """Validate one node and return the number of leaf conditions under it."""
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"filters may be nested at most {MAX_DEPTH} levels deep", field=field)
    if isinstance(filter, AllOf | AnyOf):
        return _validate_list(filter, field, depth)
    if isinstance(filter, Not):
        return _validate(filter.filter, f"{field}.negate", depth + 1)
    _validate_leaf(filter, f"{field}.field")
    return 1


def _validate_list(filter: AllOf | AnyOf, field: str, depth: int) -> int:
    name = "all_of" if isinstance(filter, AllOf) else "any_of"
    if not filter.filters:
        raise InvalidArgument(f"{field}.{name} must hold at least one filter", field=f"{field}.{name}")
    total = 0
    for i, child in enumerate(filter.filters):
        total += _validate(child, f"{field}.{name}.filters[{i}]", depth + 1)
        if total > MAX_CONDITIONS:  # stop early on a huge filter
            break
    return total


def _validate_leaf(leaf: Filter, field: str) -> None:
    if not isinstance(leaf, FieldEquals | FieldIn | NumberRange | TimeRange | FieldExists):
        raise TypeError(f"not a filter: {type(leaf).__name__}")
    if not isinstance(leaf.key, str) or not KEY_PATTERN.fullmatch(leaf.key):
        raise InvalidArgument(f"{field}.key must be {KEY_RULE}; got {leaf.key!r:.80}", field=f"{field}.key")
    if isinstance(leaf, FieldEquals):
        _validate_scalar(leaf.value, f"{field}.equals")
    elif isinstance(leaf, FieldIn):
        _validate_in(leaf, f"{field}.in_values")
    elif isinstance(leaf, NumberRange):
        _validate_number_range(leaf, f"{field}.number_range")
    elif isinstance(leaf, TimeRange):
        _validate_time_range(leaf, f"{field}.time_range")


def _validate_scalar(value: object, field: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int | float):
        if not _is_finite_number(value):
            raise InvalidArgument(f"{field} must be a finite number, got {value}", field=field)
    else:
        raise InvalidArgument(f"{field} must be a string, number or bool", field=field)


def _validate_in(leaf: FieldIn, field: str) -> None:
    if not 1 <= len(leaf.values) <= MAX_IN_VALUES:
        raise InvalidArgument(
            f"{field} must hold 1..{MAX_IN_VALUES} values, got {len(leaf.values)}", field=field
        )
    for i, value in enumerate(leaf.values):
        _validate_scalar(value, f"{field}.values[{i}]")


def _validate_number_range(leaf: NumberRange, field: str) -> None:
    bounds = _set_bounds(leaf.gt, leaf.gte, leaf.lt, leaf.lte)
    if not bounds:
        raise InvalidArgument(f"{field} must set at least one of gt, gte, lt, lte", field=field)
    for name, bound in bounds:
        if not _is_finite_number(bound):
            raise InvalidArgument(f"{field}.{name} must be a finite number, got {bound!r}", field=field)


def _validate_time_range(leaf: TimeRange, field: str) -> None:
    bounds = _set_bounds(leaf.gt, leaf.gte, leaf.lt, leaf.lte)
    if not bounds:
        raise InvalidArgument(f"{field} must set at least one of gt, gte, lt, lte", field=field)
    for name, bound in bounds:
        if not isinstance(bound, datetime) or bound.utcoffset() is None:
            raise InvalidArgument(f"{field}.{name} must be a timezone-aware timestamp", field=field)


def _is_finite_number(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):  # any size: math.isfinite would overflow on 10**400
        return True
    return isinstance(value, float) and math.isfinite(value)


def _set_bounds(gt: _T | None, gte: _T | None, lt: _T | None, lte: _T | None) -> list[tuple[str, _T]]:
    """The bounds that are set, as (name, value), in a fixed order."""
    named = (("gt", gt), ("gte", gte), ("lt", lt), ("lte", lte))
    return [(name, bound) for name, bound in named if bound is not None]


# Compilation (runs only on validated filters)


def _decimal(number: float) -> Decimal:
    """A float as its shortest decimal (repr), so a bound of 0.1 equals a stored 0.1.

    Decimal(0.1) would be the binary value 0.1000000000000000055..., and a
    stored 0.1 would then fail `gte 0.1`.
    """
    if isinstance(number, int):
        return Decimal(number)
    return Decimal(repr(number))


_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class _Compiler:
    def __init__(self, params: list[object], column: str) -> None:
        self._params = params
        self._column = column

    def _param(self, value: object) -> str:
        self._params.append(value)
        return f"${len(self._params)}"

    def compile(self, filter: Filter) -> str:
        if isinstance(filter, AllOf):
            return "(" + " AND ".join(self.compile(f) for f in filter.filters) + ")"
        if isinstance(filter, AnyOf):
            return "(" + " OR ".join(self.compile(f) for f in filter.filters) + ")"
        if isinstance(filter, Not):
            return f"(NOT {self.compile(filter.filter)})"
        if isinstance(filter, FieldEquals):
            return self._contains(filter.key, filter.value)
        if isinstance(filter, FieldIn):
            return self._contains_any(filter.key, filter.values)
        if isinstance(filter, FieldExists):
            return self._exists(filter)
        if isinstance(filter, NumberRange):
            return self._number_range(filter)
        return self._time_range(filter)

    def _contains(self, key: str, value: Scalar) -> str:
        # Containment compares jsonb values with their types, and the GIN index
        # (jsonb_path_ops) serves it. The key sits inside the JSON parameter.
        document = json.dumps({key: value})
        return f"({self._column} @> {self._param(document)}::text::jsonb)"

    def _contains_any(self, key: str, values: tuple[Scalar, ...]) -> str:
        # One array parameter however many values; bitmap scans of the GIN
        # index handle `@> ANY`.
        documents = [json.dumps({key: value}) for value in values]
        return f"({self._column} @> ANY({self._param(documents)}::text[]::jsonb[]))"

    def _exists(self, leaf: FieldExists) -> str:
        test = f"({self._column} ? {self._param(leaf.key)}::text)"
        return test if leaf.exists else f"(NOT {test})"

    def _number_range(self, leaf: NumberRange) -> str:
        # numeric, not float8: a stored 1e400 cannot overflow the cast, and
        # bounds compare exactly with the decimal text JSON stores.
        value = f"({self._column} -> {self._param(leaf.key)}::text)"
        checks = [
            f"{value}::numeric {_OPERATORS[name]} {self._param(_decimal(bound))}::numeric"
            for name, bound in _set_bounds(leaf.gt, leaf.gte, leaf.lt, leaf.lte)
        ]
        return f"(CASE WHEN jsonb_typeof({value}) = 'number' THEN {' AND '.join(checks)} ELSE false END)"

    def _time_range(self, leaf: TimeRange) -> str:
        key = self._param(leaf.key)
        value = f"({self._column} -> {key}::text)"
        text = f"({self._column} ->> {key}::text)"
        guard = (
            f"jsonb_typeof({value}) = 'string' AND {text} ~ '{_ISO_8601}'"
            f" AND pg_input_is_valid({text}, 'timestamptz')"
        )
        checks = [
            f"{text}::timestamptz {_OPERATORS[name]} {self._param(bound)}::timestamptz"
            for name, bound in _set_bounds(leaf.gt, leaf.gte, leaf.lt, leaf.lte)
        ]
        # CASE, unlike AND, guarantees the cast runs only once the guard holds.
        return f"(CASE WHEN {guard} THEN {' AND '.join(checks)} ELSE false END)"
