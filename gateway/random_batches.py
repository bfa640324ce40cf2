"""Random values made a batch at a time (request ids, trace ids): one ``os.urandom`` call and
one formatting comprehension per batch, a ``list.pop`` per request. Emptied in a forked child,
so two workers never hand out the same values."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class RandomBatches(Generic[T]):
    __slots__ = ("_make", "_nbytes", "_reject", "items")

    def __init__(self, nbytes: int, make: Callable[[str], list[T]], reject: str | None = None) -> None:
        """``make`` turns ``nbytes`` random bytes in hex into a batch; a draw containing
        ``reject`` (an invalid value somewhere in it) is drawn again whole."""
        self._nbytes, self._make, self._reject = nbytes, make, reject
        self.items: list[T] = []
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.items = []

    def refill(self) -> list[T]:
        h = os.urandom(self._nbytes).hex()
        while self._reject is not None and self._reject in h:  # pragma: no cover
            h = os.urandom(self._nbytes).hex()
        self.items = items = self._make(h)
        return items
