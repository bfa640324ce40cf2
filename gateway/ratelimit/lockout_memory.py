"""``LockoutMemory``: the lockouts one process has seen or set, kept for the process's life.

It outlives config reloads (each runtime builds a new ``LockoutService``), and it is what
holds a lockout when the store cannot: during an outage (``on_store_failure: local|allow``)
and after a store reset (SPEC App. C), when the write-back puts each lockout back with the
time it has left, never shortening a lockout the store already holds.

Every instance learns of a lockout (and of an operator's clear) when it happens, by pub/sub on
``lockouts``, not only when it next reads that subject: so a reset right after a lockout finds
it in every instance's memory, not just in the one that set it. Lockouts are rare events; the
request path still reads the store only for login routes, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

import orjson

from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore
from gateway.state.sync import cancel_until_done

KNOWN_LOCKOUTS = 65536  # bounded (LRU): an attacker spraying IPs must not grow it forever
CHANNEL = "lockouts"
LOCK_PREFIX = "rl:lock:"
_RETRY = 1.0

log = logging.getLogger(__name__)


class LockoutMemory:
    def __init__(
        self, store: StateStore, *, limit: int = KNOWN_LOCKOUTS, clock: Callable[[], float] = time.time
    ) -> None:
        self._store, self._limit, self._clock = store, limit, clock
        self._known: OrderedDict[str, tuple[float, bytes]] = OrderedDict()  # key → (until, record)
        self._task: asyncio.Task[None] | None = None

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

    # -- propagation ---------------------------------------------------------------------------
    async def announce(self, key: str, record: bytes | None) -> None:
        """Tell every instance of a lockout set (``record``) or cleared (None); best effort."""
        message = {"key": key, "record": None if record is None else orjson.loads(record)}
        with contextlib.suppress(StoreUnavailable):
            await self._store.publish(CHANNEL, orjson.dumps(message))

    def apply(self, message: bytes) -> None:
        """Remember (or forget) what an ``announce`` said; anything malformed is ignored."""
        try:
            data = orjson.loads(message)
            key, record = data["key"], data["record"]
            if not isinstance(key, str) or not key.startswith(LOCK_PREFIX):
                raise ValueError("not a lockout key")
            if record is None:
                self.forget(key)
                return
            until = record["until"]
            if isinstance(until, bool) or not isinstance(until, int | float) or not math.isfinite(until):
                raise ValueError("bad until")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error("lockouts: ignoring a malformed announcement")
            return
        if until > self.until(key):  # never shortens what this process knows
            self.remember(key, float(until), orjson.dumps(record))

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="lockouts-follow")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_until_done(task)

    async def _follow(self) -> None:
        while True:
            try:
                sub = await self._store.subscribe(CHANNEL)
            except StoreUnavailable:
                await asyncio.sleep(_RETRY)
                continue
            try:
                with contextlib.suppress(StoreUnavailable):
                    async for _channel, message in sub:
                        self.apply(message)
            finally:
                await sub.close()
            await asyncio.sleep(_RETRY)

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


__all__ = ["CHANNEL", "KNOWN_LOCKOUTS", "LockoutMemory"]
