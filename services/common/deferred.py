"""A dependency that becomes ready after the server has started.

A service starts its gRPC server first, answering health checks with
NOT_SERVING, and only then loads its model or opens its database pool. Until
then its servicer holds a Deferred, and calls that need it get UNAVAILABLE.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from services.common.errors import Unavailable

T = TypeVar("T")


class Deferred(Generic[T]):
    def __init__(self, what: str) -> None:
        self._what = what
        self._value: T | None = None

    def resolve(self, value: T) -> None:
        self._value = value

    @property
    def ready(self) -> bool:
        return self._value is not None

    @property
    def value(self) -> T:
        if self._value is None:
            raise Unavailable(f"{self._what} is still starting; retry shortly")
        return self._value
