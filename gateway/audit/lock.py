"""Mutual exclusion for appending to one tenant's chain.

The store gives ``log_append`` an atomic, gapless seq, but a record's hash depends on the record
before it, so "read the head, build, append" must not interleave between writers. Two layers:

1. In this process: one ``asyncio.Lock`` per (store object, tenant), shared by every
   ``AuditTrail`` on that store object, so coroutines queue locally instead of polling the store.
2. Across processes and instances sharing the store (``store.shared``, i.e. Redis): a lease
   key ``audit-lock:<tenant>`` taken with ``set(..., only_if_absent=True, ttl=lock_ttl)`` and a
   random token. A crashed holder blocks the tenant for at most ``lock_ttl``. With ``local:``
   state there is one process by contract (SPEC §14), so layer 1 is enough and no lease is
   taken (it would cost two more fsync'd writes per record).

A lease can expire under a holder that stalls (GC pause, overloaded host). The holder therefore
checks, immediately before appending, that less than half the ttl has passed since it *asked*
for the lease (the server's timer starts later than that), and otherwise gives up with
``StoreUnavailable`` - the event is spooled and replayed, never forked. It releases the lease
only under the same bound, so it never deletes a lease another writer has since taken. The
residual risk - an append sent within the bound but executed by the server more than half a ttl
later - is detected after the fact (the returned seq differs) and logged; verify reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore

_LOCAL_LOCKS: weakref.WeakKeyDictionary[StateStore, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()
_LEASE_PREFIX = "audit-lock:"


@dataclass(slots=True)
class Lease:
    asked_at: float
    ttl: float

    def valid(self) -> bool:
        return time.monotonic() - self.asked_at < self.ttl / 2

    def check(self) -> None:
        """Raise StoreUnavailable when the lease may be about to expire: do not append."""
        if not self.valid():
            raise StoreUnavailable("audit trail lease expired before the append")


def _local_lock(store: StateStore, tenant: str) -> asyncio.Lock:
    locks = _LOCAL_LOCKS.setdefault(store, {})
    lock = locks.get(tenant)
    if lock is None:
        lock = locks[tenant] = asyncio.Lock()
    return lock


@contextlib.asynccontextmanager
async def chain_lock(store: StateStore, tenant: str, *, ttl: float, wait: float) -> AsyncIterator[Lease]:
    """Hold the right to append to ``tenant``'s chain. ``StoreUnavailable`` if the store fails
    or the lease is not obtained within ``wait`` seconds (the caller spools)."""
    async with _local_lock(store, tenant):
        if not store.shared:
            # No other process writes this store: the local lock is the whole story.
            yield Lease(time.monotonic(), float("inf"))
            return
        key, token = _LEASE_PREFIX + tenant, secrets.token_hex(16).encode()
        deadline, delay = time.monotonic() + wait, 0.002
        while True:
            asked = time.monotonic()
            # SECURITY: one appender per chain at a time, or two records would share a prev_hash.
            if await store.set(key, token, ttl=ttl, only_if_absent=True):
                break
            if time.monotonic() >= deadline:
                raise StoreUnavailable("audit trail busy: chain lock not obtained")
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
            delay = min(delay * 2, 0.05)
        lease = Lease(asked, ttl)
        try:
            yield lease
        finally:
            if lease.valid():
                # The get/delete pair is not atomic, but within half the ttl nobody else can
                # hold the key, so this never removes another writer's lease.
                with contextlib.suppress(StoreUnavailable):
                    if await store.get(key) == token:
                        await store.delete(key)
