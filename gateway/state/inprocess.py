"""In-process pub/sub for the single-process ``local:`` backend."""

from __future__ import annotations

import asyncio

from gateway.errors import StoreUnavailable
from gateway.state.base import Subscription

_QUEUE_LIMIT = 10_000


class LocalSubscription(Subscription):
    """An in-process subscription: a bounded queue the store's publish() fills."""

    def __init__(self, hub: set[LocalSubscription], channels: frozenset[str]) -> None:
        self.channels = channels
        self._hub = hub
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(_QUEUE_LIMIT)
        self._overflowed = False
        self._closed = False
        hub.add(self)

    def deliver(self, channel: str, message: bytes) -> None:
        try:
            self._queue.put_nowait((channel, message))
        except asyncio.QueueFull:
            # A consumer this far behind has lost track anyway: fail it so it resubscribes
            # and reloads, the same contract as a dropped Redis connection.
            self._overflowed = True
            self._hub.discard(self)

    async def __anext__(self) -> tuple[str, bytes]:
        if self._closed:
            raise StopAsyncIteration
        if self._overflowed and self._queue.empty():
            raise StoreUnavailable("local subscription overflowed")
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub.discard(self)
            if not self._queue.full():  # a full queue has no waiter to wake
                self._queue.put_nowait(None)
