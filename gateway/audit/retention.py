"""Retention (SPEC §11): the oldest records removed behind an ``audit.checkpoint``, a mixin of
``trail.AuditTrail``.

The checkpoint is appended (and anchored) first, carrying ``removed_through_seq`` and
``removed_last_hash``; only then is the log trimmed up to that seq, so the first remaining
record's prev_hash is the hash the checkpoint names (``gateway.audit.verify`` requires it) and a
crash in between leaves extra records, never an unvouched gap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.audit import anchors as _anchors
from gateway.audit.chain import ChainWriter, closing_reader, stream_name
from gateway.audit.record import (
    CHECKPOINT_EVENT,
    GATEWAY_ACTOR,
    GENESIS_HASH,
    decode_record,
    format_time,
    validate_tenant,
)
from gateway.audit.spool import PendingRecord
from gateway.state.base import StateStore


class TrailRetention:
    """The retention methods of ``AuditTrail``; its state is declared here for the type checker."""

    _store: StateStore
    _chain: ChainWriter
    _clock: Callable[[], float]
    _anchoring: _anchors.Anchoring | None
    tenants: Callable[[], Any]
    anchor: Callable[[str], Any]

    async def apply_retention(self, tenant: str, older_than_seconds: float) -> int:
        """Remove the oldest records, up to the first one not older than the cutoff, behind an
        ``audit.checkpoint``; returns how many were removed. Needs the store (StoreUnavailable)."""
        stream = stream_name(validate_tenant(tenant))
        cutoff = format_time(self._clock() - older_than_seconds)
        through, last_hash, count = 0, GENESIS_HASH, 0
        # A prefix only: trimming works by seq, and a spool replay can put an old time after a
        # newer one, so the scan stops at the first record that must stay.
        async with closing_reader(self._store.log_read(stream)) as rows:
            async for seq, raw in rows:
                rec = decode_record(raw)
                if rec is None or not isinstance(rec.get("time"), str) or rec["time"] >= cutoff:
                    break
                through, last_hash, count = seq, str(rec.get("hash")), count + 1
        if not count:
            return 0
        details = {
            "removed_through_seq": through,
            "removed_last_hash": last_hash,
            "removed_count": count,
            "cutoff": cutoff,
        }
        await self._chain.append(
            PendingRecord(
                tenant, format_time(self._clock()), CHECKPOINT_EVENT, GATEWAY_ACTOR, None, None, details
            )
        )
        # The checkpoint excuses the cut only once it is signed; signed before the cut, while
        # the whole history it vouches for can still be verified.
        await self.anchor(tenant)
        await self._store.log_trim(stream, through)
        return count

    async def apply_retention_all(self, older_than_seconds: float) -> dict[str, int]:
        """``apply_retention`` on every trail; tenant -> records removed (only those > 0)."""
        removed: dict[str, int] = {}
        for tenant in await self.tenants():
            count = await self.apply_retention(tenant, older_than_seconds)
            if count:
                removed[tenant] = count
        return removed
