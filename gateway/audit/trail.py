"""Per-tenant, hash-chained audit trails on the state store (SPEC §11, Appendix B).

How a record is chained under concurrency: ``gateway.audit.chain`` and ``gateway.audit.lock``.

Writes leave the request (``gateway.audit.writer``): ``submit`` queues an event and returns at
once, one writer task appends the queue. Writes never vanish (``gateway.audit.spool``): what the
writer cannot append (the store is down, hung or slow) is spooled to local disk, and so is
every later event while anything is spooled, so each process's events keep their order. The
writer replays the spool every ``retry_interval`` (``replay_spool`` too: the owner calls it
periodically); a replayed record keeps its original ``time`` while its seq and prev_hash are
assigned at replay, so a trail can show a time earlier than the record before it.

A record naming an incident also gets a pointer in the incident index, written inside the chain
lock just before the append, so spooled and replayed events are indexed too
(``gateway.audit.incidents``).

Retention and purge never break verification: they first append a record (``audit.checkpoint``
or ``tenant.purged``) whose details carry ``removed_through_seq`` and ``removed_last_hash``, and
only then trim the log up to that seq. The first remaining record's prev_hash is the hash the
vouching record names, which ``verify`` requires (``gateway.audit.verify``). Appending before
trimming means a crash in between leaves extra records, never an unvouched gap. Their methods:
``gateway.audit.retention`` and ``gateway.audit.purge`` (with the registry of per-tenant data a
purge deletes).

Anchors (``gateway.audit.anchors``, once ``use_anchors`` is called; the methods:
``gateway.audit.head_signing``): ``anchor`` signs a
trail's head as an ``audit.anchor`` record built inside the chain lock, so it always vouches for
the record just before it; ``anchor_all`` does it for every trail whose head is not an anchor
already. Retention and purge anchor their vouching record at once, and ``verify`` checks every
anchor plus this instance's last one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.audit import anchors as _anchors
from gateway.audit import export as _export
from gateway.audit import incidents as _incidents
from gateway.audit.chain import STREAM_PREFIX, ChainWriter, closing_reader, stream_name
from gateway.audit.head_signing import HeadSigning
from gateway.audit.purge import TrailPurge
from gateway.audit.record import (
    SYSTEM_TENANT,
    canonical_bytes,
    decode_record,
    format_time,
    normalize_details,
    validate_tenant,
)
from gateway.audit.retention import TrailRetention
from gateway.audit.spool import PendingRecord, Spool
from gateway.audit.verify import ChainVerifier, VerifyResult
from gateway.audit.writer import AuditWriter
from gateway.state.base import StateStore


class AuditTrail(HeadSigning, TrailRetention, TrailPurge):
    """Write, export, verify, trim and purge tenant audit trails."""

    def __init__(
        self,
        store: StateStore,
        *,
        spool_dir: Path,
        clock: Callable[[], float] = time.time,
        lock_ttl: float = 10.0,
        lock_wait: float = 2.0,
        retry_interval: float = 1.0,
        queue_size: int = 10_000,
        write_timeout: float = 1.0,
    ) -> None:
        self._store = store
        self._spool = Spool(spool_dir)
        self._clock = clock
        self._chain = ChainWriter(
            store, lock_ttl=lock_ttl, lock_wait=lock_wait, pre_append=_incidents.write_pointer
        )
        self._writer = AuditWriter(
            self._chain,
            self._spool,
            queue_size=queue_size,
            write_timeout=write_timeout,
            retry_interval=retry_interval,
        )
        self._anchoring: _anchors.Anchoring | None = None
        self._keys_cache: tuple[float, _anchors.AnchorKeys] | None = None

    def use_anchors(self, anchoring: _anchors.Anchoring) -> None:
        """Sign heads from now on, and check signatures in ``verify``."""
        self._anchoring = anchoring

    @property
    def spooled_count(self) -> int:
        """Events waiting in the local spool (for the metric)."""
        return self._spool.pending

    @property
    def queued_count(self) -> int:
        """Events accepted and not yet stored or spooled (for the metric)."""
        return self._writer.queued

    def close(self) -> None:
        """Stop the writer and release the spool file; queued events are spooled first, and
        pending ones stay on disk for the next process."""
        self._writer.close()
        self._spool.close()

    # -- writing ---------------------------------------------------------------------------
    def submit(
        self,
        event: str,
        *,
        tenants: Sequence[str],
        actor: str | None,
        request_id: str | None = None,
        incident: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """File ``event`` without waiting: the request path's way (``gateway.audit.writer``).
        The event is queued (or, with the queue full, spooled) when this returns. ValueError
        for caller bugs (see ``record``); OSError only if the queue is full and the spool
        directory cannot be written."""
        self._writer.put(self._pending(event, tenants, actor, request_id, incident, details))

    def system_event(self, event: str) -> Callable[[Mapping[str, Any]], Awaitable[None]]:
        """``event`` filed by the gateway itself in ``_system`` with the details given: the filing
        handed to a lower layer that must not import the trail (``state.restore``)."""

        async def file(details: Mapping[str, Any]) -> None:
            await self.record(event, tenants=[SYSTEM_TENANT], actor="gateway", details=details)

        return file

    async def record(
        self,
        event: str,
        *,
        tenants: Sequence[str],
        actor: str | None,
        request_id: str | None = None,
        incident: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """File ``event`` in the trail of every tenant in ``tenants`` (``["_system"]`` for global
        events). Returns once each copy is in the store or fsync'd to the spool (it goes
        through the same queue as ``submit``, so one process's events keep their order).
        ValueError for caller bugs (bad tenant id, non-string incident, non-JSON details);
        OSError only if the store is unreachable and the spool directory cannot be written
        either."""
        pending = self._pending(event, tenants, actor, request_id, incident, details)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writer.put(pending, future)
        await future

    def _pending(
        self,
        event: str,
        tenants: Sequence[str],
        actor: str | None,
        request_id: str | None,
        incident: str | None,
        details: Mapping[str, Any] | None,
    ) -> list[PendingRecord]:
        if not isinstance(event, str) or not event:
            raise ValueError("audit event name must be a non-empty string")
        if isinstance(tenants, str) or not tenants:
            raise ValueError("tenants must be a non-empty list of tenant ids")
        targets = list(dict.fromkeys(validate_tenant(t) for t in tenants))
        if incident is not None and (not isinstance(incident, str) or not incident):
            # Callers validate the id's shape (``validate_incident``); refusing one here would
            # lose the audit record of an action already taken, so only the type is checked.
            raise ValueError("incident must be a non-empty string or None")
        clean = normalize_details(details)
        try:
            canonical_bytes(clean)
        except UnicodeEncodeError:
            raise ValueError("audit details contain text that is not valid Unicode") from None
        stamp = format_time(self._clock())
        return [PendingRecord(t, stamp, event, actor, request_id, incident, dict(clean)) for t in targets]

    async def flush(self) -> None:
        """Return once every event accepted so far is in the store or the spool."""
        await self._writer.flush()

    async def replay_spool(self) -> int:
        """Append spooled events in order (adopting spools of dead processes first); returns how
        many were written. Stops quietly at the first store failure."""
        return await self._writer.replay()

    # -- reading ---------------------------------------------------------------------------
    async def tenants(self) -> list[str]:
        """Tenants that have a trail, sorted."""
        streams = await self._store.log_streams(STREAM_PREFIX)
        return [s.removeprefix(STREAM_PREFIX) for s in streams]

    async def _records(self, tenant: str, end_seq: int | None = None) -> AsyncIterator[dict[str, Any]]:
        async with closing_reader(self._store.log_read(stream_name(tenant), end_seq=end_seq)) as rows:
            async for _, raw in rows:
                rec = decode_record(raw)
                if rec is not None:
                    yield rec

    async def incident_actions(self, incident: str) -> tuple[list[dict[str, Any]], bool]:
        """Everything filed under ``incident``, in time order (``gateway.audit.incidents``);
        (actions, truncated). Needs the store (StoreUnavailable)."""
        return await _incidents.incident_actions(self._store, _incidents.validate_incident(incident))

    def export(
        self,
        tenant: str,
        *,
        since: str | float | None = None,
        until: str | float | None = None,
        fmt: str = "json",
        through_seq: int | None = None,
    ) -> AsyncIterator[bytes]:
        """The trail as ``fmt`` ("json", "csv", "xml"), in chunks. Arguments are checked now
        (ValueError), before the first chunk, so an HTTP handler can still answer 400.

        ``through_seq``: the export ends there (the seq ``sign_for_export`` returned). With
        anchors on, an export that ``until`` would end on an unsigned record runs on to the
        next anchor, so every export ends signed (``verify --file --jwks`` requires it)."""
        validate_tenant(tenant)
        if fmt not in _export.FORMATS:
            raise ValueError("format must be one of json, csv, xml")
        keep = _export.time_filter(
            _export.parse_time_bound(since, name="since"), _export.parse_time_bound(until, name="until")
        )
        return _export.render(
            self._records(tenant, through_seq),
            tenant=tenant,
            fmt=fmt,
            keep=keep,
            close_on=_anchors.ANCHOR_EVENT if self._anchoring is not None else None,
        )

    async def sign_for_export(self, tenant: str) -> int | None:
        """Sign the head for an export (App. C); the seq of the anchor now on the head, for
        ``export(through_seq=...)``, or None (anchors off, or the trail does not verify: then
        the export is left unsigned at its end and an offline verify says so)."""
        return (await self._sign_head(tenant))[1]

    async def verify(self, tenant: str) -> VerifyResult:
        """Check the stored chain of ``tenant`` (streamed), and its anchors when enabled."""
        result, _ = await self._verify(tenant)
        return result

    def _unsigned_before(self) -> str | None:
        if self._anchoring is None:
            return None
        return format_time(self._clock() - self._anchoring.unsigned_grace)

    async def _verify(self, tenant: str, keys: _anchors.AnchorKeys | None = None) -> tuple[VerifyResult, str]:
        """The verdict and the hash of the last record checked."""
        stream = stream_name(validate_tenant(tenant))
        expected_last = await self._store.log_length(stream)
        checker = ChainVerifier(tenant=tenant)
        if self._anchoring is not None:
            checker = ChainVerifier(
                tenant=tenant,
                anchor_keys=keys if keys is not None else await self._anchoring.archive.load(),
                last_anchor=await self._anchoring.newest(tenant),
                unsigned_before=self._unsigned_before(),
            )
        async with closing_reader(self._store.log_read(stream, end_seq=expected_last)) as rows:
            async for seq, raw in rows:
                if not checker.feed(decode_record(raw), position=seq):
                    break
        return checker.finish(expected_last=expected_last), checker.last_hash
