"""Store calls on the request path, bounded by ``rate_limits.store_timeout`` (issue 15, item 2).

The Redis backend's own socket timeout (``state.url`` ``socket_timeout``, default 1 s) is what
a background task may wait on a hung store; a request must wait less: no request waits on a
sick store longer than ``store_timeout`` (default 300 ms), after which it is answered as the
feature decides (``StoreUnavailable`` → 503 ``store-unavailable`` for the MFA step and support
grants; lockouts and rate limits have their own ``on_store_failure``).

Cancelling a redis-py command is safe: the driver drops that connection (its reply would
otherwise be read by the next command), and the pool opens a new one.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import TypeVar

from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore, Subscription

T = TypeVar("T")


async def within(call: Awaitable[T], timeout: float) -> T:
    """Await ``call`` for at most ``timeout`` seconds; ``StoreUnavailable`` after that."""
    try:
        async with asyncio.timeout(timeout):
            return await call
    except TimeoutError:
        raise StoreUnavailable("The state store did not answer in time") from None


async def bounded_iter(rows: AsyncIterator[T], timeout: float) -> AsyncIterator[T]:
    """``rows`` with every step bounded by ``timeout`` (a stream read in batches)."""
    iterator = aiter(rows)
    try:
        while True:
            try:
                item = await within(anext(iterator), timeout)
            except StopAsyncIteration:
                return
            yield item
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()


class BoundedStore(StateStore):
    """``inner`` with every call bounded by ``timeout()`` (read on each call: a reload may
    change ``store_timeout``). Pub/sub is not request-path work and is passed through."""

    def __init__(self, inner: StateStore, timeout: Callable[[], float]) -> None:
        self._inner, self._timeout = inner, timeout
        self.kind, self.shared = inner.kind, inner.shared

    def _bound(self, call: Awaitable[T]) -> Awaitable[T]:
        return within(call, self._timeout())

    async def open(self) -> None:
        await self._inner.open()

    async def close(self) -> None:
        """The inner store belongs to its owner: closing this view closes nothing."""

    async def ping(self) -> None:
        await self._bound(self._inner.ping())

    def describe(self) -> str:
        return self._inner.describe()

    async def get(self, key: str) -> bytes | None:
        return await self._bound(self._inner.get(key))

    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        return await self._bound(self._inner.set(key, value, ttl=ttl, only_if_absent=only_if_absent))

    async def delete(self, *keys: str) -> int:
        return await self._bound(self._inner.delete(*keys))

    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        return await self._bound(self._inner.incr(key, amount, ttl=ttl))

    async def hset(self, key: str, field: str, value: bytes) -> None:
        await self._bound(self._inner.hset(key, field, value))

    async def hget(self, key: str, field: str) -> bytes | None:
        return await self._bound(self._inner.hget(key, field))

    async def hgetall(self, key: str) -> dict[str, bytes]:
        return await self._bound(self._inner.hgetall(key))

    async def hdel(self, key: str, *fields: str) -> int:
        return await self._bound(self._inner.hdel(key, *fields))

    async def sadd(self, key: str, *members: str) -> int:
        return await self._bound(self._inner.sadd(key, *members))

    async def srem(self, key: str, *members: str) -> int:
        return await self._bound(self._inner.srem(key, *members))

    async def smembers(self, key: str) -> builtins.set[str]:
        return await self._bound(self._inner.smembers(key))

    async def log_append(self, stream: str, record: bytes) -> int:
        return await self._bound(self._inner.log_append(stream, record))

    def log_read(
        self, stream: str, *, start_seq: int = 1, end_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        rows = self._inner.log_read(stream, start_seq=start_seq, end_seq=end_seq)
        return bounded_iter(rows, self._timeout())

    async def log_length(self, stream: str) -> int:
        return await self._bound(self._inner.log_length(stream))

    async def log_trim(self, stream: str, upto_seq: int) -> int:
        return await self._bound(self._inner.log_trim(stream, upto_seq))

    async def log_streams(self, prefix: str) -> list[str]:
        return await self._bound(self._inner.log_streams(prefix))

    async def keys(self, prefix: str) -> list[str]:
        return await self._bound(self._inner.keys(prefix))

    async def delete_prefix(self, prefix: str) -> int:
        return await self._bound(self._inner.delete_prefix(prefix))

    async def compare_and_set(self, key: str, expected: bytes | None, value: bytes) -> bytes | None:
        return await self._bound(self._inner.compare_and_set(key, expected, value))

    async def hash_compare_and_set(
        self, key: str, field: str, expected: bytes | None, value: bytes
    ) -> bytes | None:
        return await self._bound(self._inner.hash_compare_and_set(key, field, expected, value))

    async def set_max(self, key: str, value: int) -> int:
        return await self._bound(self._inner.set_max(key, value))

    async def set_keep_later(self, key: str, value: bytes, ttl: float) -> bool:
        return await self._bound(self._inner.set_keep_later(key, value, ttl))

    async def hash_merge(
        self,
        key: str,
        entries: Mapping[str, bytes],
        removed: Collection[str] = (),
        *,
        tombstone_ttl: float = 3600.0,
        keep_later: bool = False,
    ) -> int:
        merge = self._inner.hash_merge(
            key, entries, removed, tombstone_ttl=tombstone_ttl, keep_later=keep_later
        )
        return await self._bound(merge)

    async def publish(self, channel: str, message: bytes) -> None:
        await self._bound(self._inner.publish(channel, message))

    async def subscribe(self, *channels: str) -> Subscription:
        return await self._inner.subscribe(*channels)
