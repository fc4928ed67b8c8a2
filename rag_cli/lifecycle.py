"""A context manager over start() and stop(), for the things that run processes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class StartsAndStops(ABC):
    """`with thing:` starts it and stops it; a start that fails part-way stops what it had started."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> object: ...

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
