"""Checks shared by every service's request validation."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument

NAMESPACE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
NAMESPACE_RULE = "lower-case letters, digits, '_' and '-', 1..63 characters, starting with a letter or digit"


def require_namespace(namespace: str, field: str = "namespace") -> str:
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise InvalidArgument(f"{field} must be {NAMESPACE_RULE}; got {namespace!r:.80}", field=field)
    return namespace


def require_text(value: str, field: str, *, max_chars: int) -> str:
    """A non-blank string of at most max_chars characters."""
    if not value.strip():
        raise InvalidArgument(f"{field} must not be empty or blank", field=field)
    if len(value) > max_chars:
        raise InvalidArgument(
            f"{field} must be at most {max_chars} characters, got {len(value)}", field=field
        )
    return value


def require_range(value: int, field: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{field} must be {low}..{high}, got {value}", field=field)
    return value
