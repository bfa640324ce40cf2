"""``LockoutMemory``: the lockouts one process has seen or set, kept for the process's life.

It outlives config reloads (each runtime builds a new ``LockoutService``), and it is what
holds a lockout when the store cannot: during an outage (``on_store_failure: local|allow``)
and after a store reset (SPEC App. C), when the write-back puts each lockout back with the
time it has left, never shortening a lockout the store already holds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.state.base import StateStore

KNOWN_LOCKOUTS = 65536  # bounded (LRU): an attacker spraying IPs must not grow it forever


class LockoutMemory:
    def __init__(
        self, store: StateStore, *, limit: int = KNOWN_LOCKOUTS, clock: Callable[[], float] = time.time
    ) -> None:
        self._store, self._limit, self._clock = store, limit, clock
        self._known: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key → (until, record)

    def until(self, key: str) -> float:
        """When the lockout stored under ``key`` ends, as far as this process knows (0: none)."""
        entry = self._known.get(key)
        return 0.0 if entry is None else entry[0]

    def remember(self, key: str, until: float, record: bytes) -> None:
        self._known[key] = (until, record)
        self._known.move_to_end(key)
        while len(self._known) > self._limit:
            self._known.popitem(last=False)

    def forget(self, key: str) -> None:
        self._known.pop(key, None)

    async def restore(self) -> tuple[int, int]:
        """Put every unexpired lockout back into a store that was reset, for the time it has
        left; a lockout the store holds for longer is kept. Returns (held, written)."""
        now = self._clock()
        live = [(k, until, record) for k, (until, record) in list(self._known.items()) if until > now]
        written = 0
        for key, until, record in live:
            written += await self._store.set_keep_later(key, record, until - now)
        return len(live), written

    async def reload(self) -> bool:
        return True  # nothing to reload: lockouts are read from the store per login request


__all__ = ["KNOWN_LOCKOUTS", "LockoutMemory"]
