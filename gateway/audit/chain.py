"""Appending to one tenant's hash chain, correctly under concurrency.

Each tenant's trail is the log stream ``audit:<tenant>``; record N sits at log seq N and its
``prev_hash`` is the ``hash`` of record N-1. ``log_append`` hands out gapless seqs atomically,
but the hash of a record depends on its predecessor, so every append runs inside the tenant's
chain lock (``gateway.audit.lock``: an asyncio lock in-process plus a store lease on a shared
store) and, holding it, reads the head (``log_length`` and the record at that seq), builds
record head+1 on the head's hash, and appends. Holding the lock, the seq ``log_append``
returns is the one the record claims; a mismatch means the lease was lost and is logged loudly
(verify will report the broken link).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog

from gateway.audit.lock import chain_lock
from gateway.audit.record import GENESIS_HASH, build_record, decode_record, encode_record
from gateway.audit.spool import PendingRecord
from gateway.state.base import StateStore

log = structlog.get_logger("gateway.audit")

STREAM_PREFIX = "audit:"
Builder = Callable[[int, str], Awaitable[dict[str, Any]]]
"""Build the next record from the head's (seq, hash); runs inside the chain lock."""


def stream_name(tenant: str) -> str:
    return STREAM_PREFIX + tenant


PreAppend = Callable[[StateStore, dict[str, Any]], Awaitable[None]]
"""Runs inside the chain lock with the built record, before its append (the incident index)."""


class ChainWriter:
    def __init__(
        self, store: StateStore, *, lock_ttl: float, lock_wait: float, pre_append: PreAppend | None = None
    ) -> None:
        self.store = store
        self._lock_ttl, self._lock_wait = lock_ttl, lock_wait
        self._pre_append = pre_append

    async def append(
        self, rec: PendingRecord, before_append: Callable[[int, str], None] | None = None
    ) -> dict[str, Any]:
        """Chain ``rec`` onto its tenant's trail. ``before_append(seq, hash)`` runs just before
        the append (the spool journals the attempt there); ``rec.attempt`` is set likewise, so a
        caller that sees StoreUnavailable knows whether the outcome is uncertain."""

        async def build(head_seq: int, head_hash: str) -> dict[str, Any]:
            return build_record(
                seq=head_seq + 1,
                time=rec.time,
                tenant=rec.tenant,
                event=rec.event,
                actor=rec.actor,
                request_id=rec.request_id,
                incident=rec.incident,
                details=rec.details,
                prev_hash=head_hash,
            )

        def attempted(seq: int, hash_: str) -> None:
            if before_append is not None:
                before_append(seq, hash_)
            rec.attempt = (seq, hash_)

        return await self.append_built(rec.tenant, build, attempted)

    async def append_built(
        self, tenant: str, build: Builder, attempted: Callable[[int, str], None] | None = None
    ) -> dict[str, Any]:
        """Append the record ``build`` makes from the current head; returns it."""
        stream = stream_name(tenant)
        async with chain_lock(self.store, tenant, ttl=self._lock_ttl, wait=self._lock_wait) as lease:
            head_seq, head_hash = await self.head(stream)
            rec = await build(head_seq, head_hash)
            if self._pre_append is not None:
                # Before the append: a failure here spools the event, so no record goes unindexed.
                await self._pre_append(self.store, rec)
            lease.check()
            if attempted is not None:
                attempted(rec["seq"], rec["hash"])
            seq = await self.store.log_append(stream, encode_record(rec))
        if seq != rec["seq"]:
            # SECURITY: the chain forked (lease lost); verify will flag this record.
            log.error("audit.chain_fork", tenant=tenant, expected_seq=rec["seq"], stored_seq=seq)
        return rec

    async def head(self, stream: str) -> tuple[int, str]:
        """(seq, hash) of the newest record; (0, genesis) for a new trail."""
        length = await self.store.log_length(stream)
        if length == 0:
            return 0, GENESIS_HASH
        head = await self.read_one(stream, length)
        if head is None or not isinstance(head.get("hash"), str):
            # The newest record is gone or unreadable (tampering): keep auditing; the next
            # record's genesis prev_hash makes verify report the damage.
            log.error("audit.head_missing", stream=stream, seq=length)
            return length, GENESIS_HASH
        return length, head["hash"]

    async def read_one(self, stream: str, seq: int) -> dict[str, Any] | None:
        found = None
        # A one-record range, read to its end: no half-consumed generator left behind.
        async for _, raw in self.store.log_read(stream, start_seq=seq, end_seq=seq):
            found = decode_record(raw)
        return found

    async def already_stored(self, rec: PendingRecord) -> bool:
        """Whether an earlier, unacknowledged append of ``rec`` did land (same seq, same hash)."""
        if rec.attempt is None:
            return False
        seq, hash_ = rec.attempt
        stored = await self.read_one(stream_name(rec.tenant), seq)
        return stored is not None and stored.get("hash") == hash_

    async def count(self, tenant: str, start: int, end: int) -> int:
        """Records present with seq in [start, end]."""
        if end < start:
            return 0
        found = 0
        async for _ in self.store.log_read(stream_name(tenant), start_seq=start, end_seq=end):
            found += 1
        return found


def closing_reader(iterator: AsyncIterator[Any]) -> contextlib.AbstractAsyncContextManager[Any]:
    # Close a half-read log_read generator at once instead of leaving it to the GC.
    return contextlib.aclosing(iterator) if hasattr(iterator, "aclose") else contextlib.nullcontext()
