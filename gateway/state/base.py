"""The one state-store interface every feature is written against (SPEC §14).

Keys, hash fields, set members and channels are ``str``; values and records are ``bytes``
(callers choose their own encoding, usually orjson). Every backend failure - unreachable,
timed out, disk error, closed store - raises ``StoreUnavailable`` and nothing else, so each
caller decides its own failure mode (fail closed, serve a snapshot, spool to disk).

Namespaces: plain values, hashes and sets share one key namespace (``keys``/``delete_prefix``
see all three); append-only logs live in their own namespace and are reached only through
the ``log_*`` methods. Using one key as two types is a caller bug; backends may differ there.
"""

from __future__ import annotations

import abc
import builtins
import math
from collections.abc import AsyncIterator, Collection, Mapping
from types import TracebackType
from typing import Self, overload

import orjson

from gateway.errors import StoreUnavailable


class Subscription(abc.ABC):
    """Messages published on some channels, as ``(channel, message)`` pairs, until closed.

    Iteration raises ``StoreUnavailable`` when the subscription is broken (for Redis: the
    connection was lost); messages published meanwhile are lost, so the caller resubscribes
    and then reloads whatever the channel announces (``SyncedSnapshot`` does exactly that).
    Iteration stops (``StopAsyncIteration``) after ``close()``.
    """

    def __aiter__(self) -> Self:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> tuple[str, bytes]: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Unsubscribe and release the connection; idempotent."""


class StateStore(abc.ABC):
    """Durable key/value, hash, set, append-only log and pub/sub state."""

    kind: str
    """``"local"`` or ``"redis"``."""
    shared: bool
    """True when every instance and worker sees the same state (Redis); False for local."""

    # -- lifecycle -------------------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Prepare the backend. Redis does not contact the server here (start-up without the
        store must work); use ``ping()`` to check reachability."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release everything, ending open subscriptions; idempotent."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the backend answers; raise ``StoreUnavailable`` otherwise."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The store URL with any password masked, for logs and the admin config view."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        # SECURITY: describe() masks the password, so a logged store never leaks it.
        return f"<{type(self).__name__} {self.describe()}>"

    # -- plain values ----------------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    @abc.abstractmethod
    async def set(
        self, key: str, value: bytes, *, ttl: float | None = None, only_if_absent: bool = False
    ) -> bool:
        """Store ``value`` (expiring after ``ttl`` seconds if given; a set without ttl clears
        an earlier one). With ``only_if_absent`` nothing changes if the key exists. Returns
        whether the value was written."""

    @abc.abstractmethod
    async def delete(self, *keys: str) -> int:
        """Remove keys of any type; returns how many existed."""

    @abc.abstractmethod
    async def incr(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Atomically add ``amount`` and return the new value. ``ttl`` applies only when this
        call creates the key (a fixed window, as lockouts need). ``ValueError`` if the stored
        value is not an integer."""

    # -- hashes ----------------------------------------------------------------------------
    @abc.abstractmethod
    async def hset(self, key: str, field: str, value: bytes) -> None: ...

    @abc.abstractmethod
    async def hget(self, key: str, field: str) -> bytes | None: ...

    @abc.abstractmethod
    async def hgetall(self, key: str) -> dict[str, bytes]: ...

    @abc.abstractmethod
    async def hdel(self, key: str, *fields: str) -> int:
        """Remove fields; returns how many existed."""

    # -- sets ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def sadd(self, key: str, *members: str) -> int:
        """Add members; returns how many were new."""

    @abc.abstractmethod
    async def srem(self, key: str, *members: str) -> int:
        """Remove members; returns how many were present."""

    @abc.abstractmethod
    async def smembers(self, key: str) -> builtins.set[str]: ...

    # -- append-only logs (per-tenant audit trails) ----------------------------------------
    @abc.abstractmethod
    async def log_append(self, stream: str, record: bytes) -> int:
        """Append ``record`` and return its seq: 1, 2, 3... per stream, gapless and atomic
        even under concurrent appenders on many instances."""

    @abc.abstractmethod
    def log_read(
        self, stream: str, *, start_seq: int = 1, end_seq: int | None = None
    ) -> AsyncIterator[tuple[int, bytes]]:
        """``(seq, record)`` in seq order, start and end inclusive, fetched in batches so a
        million records stream in constant memory."""

    @abc.abstractmethod
    async def log_length(self, stream: str) -> int:
        """The highest seq ever appended (0 for a new stream); trimming does not lower it."""

    @abc.abstractmethod
    async def log_trim(self, stream: str, upto_seq: int) -> int:
        """Remove records with seq <= ``upto_seq``; returns how many. Numbering continues."""

    @abc.abstractmethod
    async def log_streams(self, prefix: str) -> list[str]:
        """Names of streams starting with ``prefix``, sorted."""

    # -- key listing -----------------------------------------------------------------------
    @abc.abstractmethod
    async def keys(self, prefix: str) -> list[str]:
        """Keys (values, hashes, sets) starting with ``prefix``, sorted. Never blocks Redis."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` (logs excluded); returns how many."""

    # -- merge primitives (store reset write-back, SPEC App. C) -----------------------------
    # Each is one atomic step, so instances writing back concurrently cannot lose an entry or
    # overwrite a newer one with an older one (``gateway.state.restore``).
    @abc.abstractmethod
    async def compare_and_set(self, key: str, expected: bytes | None, value: bytes) -> bytes | None:
        """Set ``key`` (no ttl) to ``value`` only if it now holds ``expected`` (None: absent);
        returns the value stored afterwards (``value``, or what was there, None if absent)."""

    @abc.abstractmethod
    async def set_max(self, key: str, value: int) -> int:
        """Raise the integer at ``key`` to ``value`` unless it is already higher; returns it."""

    @abc.abstractmethod
    async def set_keep_later(self, key: str, value: bytes, ttl: float) -> bool:
        """Store ``value`` expiring after ``ttl`` unless ``key`` already outlives that (a
        later expiry or none); returns whether it was written."""

    @abc.abstractmethod
    async def hash_compare_and_set(
        self, key: str, field: str, expected: bytes | None, value: bytes
    ) -> bytes | None:
        """Set hash field ``field`` of ``key`` to ``value`` only if it now holds ``expected``
        (None: absent); returns the field's value afterwards (``value``, or what was there)."""

    @abc.abstractmethod
    async def hash_merge(
        self,
        key: str,
        entries: Mapping[str, bytes],
        removed: Collection[str] = (),
        *,
        tombstone_ttl: float = 3600.0,
        keep_later: bool = False,
    ) -> int:
        """Add the ``entries`` fields that are absent and not tombstoned; delete and tombstone
        the ``removed`` fields (for ``tombstone_ttl`` seconds), so an entry one writer knows was
        deleted is never revived by another writer's older copy. Returns how many were added.

        With ``keep_later`` the values are JSON objects with ``expires_at`` (a number; absent or
        null: never) and ``version`` (a number, else 0), and an entry also replaces a present
        field that expires earlier or, expiring at the same time, has a lower version (or is
        not such an object): the later expiry wins, then the higher version (``merge_rank``).
        Replacements count as added."""

    # -- pub/sub ---------------------------------------------------------------------------
    @abc.abstractmethod
    async def publish(self, channel: str, message: bytes) -> None:
        """Fire-and-forget: subscribers connected right now receive it, nobody else."""

    @abc.abstractmethod
    async def subscribe(self, *channels: str) -> Subscription:
        """Subscribe; messages published after this returns are delivered."""


def merge_rank(raw: bytes) -> tuple[float, float] | None:
    """``(expiry, version)`` of a record for ``hash_merge(keep_later=True)``: no expiry ranks
    above any; None when it is not such a record. Mirrored by the Redis backend's Lua."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    expiry, version = record.get("expires_at"), record.get("version")
    if expiry is None:
        expiry = math.inf
    elif isinstance(expiry, bool) or not isinstance(expiry, int | float):
        return None
    if isinstance(version, bool) or not isinstance(version, int | float):
        version = 0
    return float(expiry), float(version)


def tombstone_key(key: str) -> str:
    """Where ``hash_merge`` keeps the tombstones of ``key``'s fields (outside feature prefixes)."""
    return f"restore-tombstones:{key}"


@overload
def ttl_ms(ttl: float) -> int: ...
@overload
def ttl_ms(ttl: float | None) -> int | None: ...
def ttl_ms(ttl: float | None) -> int | None:
    """A ttl in whole milliseconds (at least 1), rejecting zero and negative ttls."""
    if ttl is None:
        return None
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    return max(1, round(ttl * 1000))


__all__ = ["StateStore", "StoreUnavailable", "Subscription", "merge_rank", "tombstone_key", "ttl_ms"]
