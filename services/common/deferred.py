"""A dependency that becomes ready after the server has started.

A service starts its gRPC server first, answering health checks with
NOT_SERVING, and only then loads its model or opens its database pool. Until
then its servicer holds a Deferred, and calls that need it get UNAVAILABLE. A
dependency that cannot become ready (a broken model folder) is marked failed
instead, and calls get the error saying why.
"""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

from services.common.errors import ServiceError, Unavailable

T = TypeVar("T")


class Deferred(Generic[T]):
    def __init__(self, what: str) -> None:
        self._what = what
        self._value: T | None = None
        self._failure: ServiceError | None = None

    def resolve(self, value: T) -> None:
        self._value = value

    def fail(self, error: ServiceError) -> None:
        """It will not become ready: calls that need it get `error` instead of "still starting"."""
        self._failure = error

    @property
    def ready(self) -> bool:
        return self._value is not None

    @property
    def value(self) -> T:
        if self._value is None:
            if self._failure is not None:
                # A fresh copy per call: one exception raised again and again would
                # keep every raise's traceback and context alive.
                raise copy.copy(self._failure)
            raise Unavailable(f"{self._what} is still starting; retry shortly")
        return self._value
