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
trimming means a crash in between leaves extra records, never an unvouched gap.

Anchors (``gateway.audit.anchors``, once ``use_anchors`` is called): ``anchor`` signs a
trail's head as an ``audit.anchor`` record built inside the chain lock, so it always vouches for
the record just before it; ``anchor_all`` does it for every trail whose head is not an anchor
already. Retention and purge anchor their vouching record at once, and ``verify`` checks every
anchor plus this instance's last one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from gateway.audit import anchors as _anchors
from gateway.audit import export as _export
from gateway.audit import incidents as _incidents
from gateway.audit.chain import STREAM_PREFIX, ChainWriter, stream_name
from gateway.audit.record import (
    CHECKPOINT_EVENT,
    GENESIS_HASH,
    PURGED_EVENT,
    SYSTEM_TENANT,
    build_record,
    canonical_bytes,
    compute_hash,
    decode_record,
    format_time,
    normalize_details,
    validate_tenant,
)
from gateway.audit.spool import PendingRecord, Spool
from gateway.audit.verify import ChainVerifier, VerifyResult
from gateway.audit.writer import AuditWriter
from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore

log = structlog.get_logger("gateway.audit")

GATEWAY_ACTOR = "gateway"
_TENANT_DATA: list[str] = []
_TENANT_DATA_CHANNELS: list[str] = []


def register_tenant_data(prefix_template: str, *, channel: str | None = None) -> None:
    """Declare a per-tenant key prefix (e.g. ``"mfa:{tenant}:"``) that ``purge_tenant`` deletes.

    ``{tenant}`` must be followed by ``:`` (which tenant ids never contain), so that purging
    tenant ``a`` can never match keys of tenant ``ab``. Registering twice is harmless.
    ``channel``: the pub/sub channel of a snapshot held from that data (support grants); a purge
    publishes on it, so every instance drops the purged entries within a pub/sub round trip
    instead of enforcing them until its next resync."""
    if "{tenant}:" not in prefix_template or prefix_template.count("{") != 1:
        raise ValueError("prefix template must contain '{tenant}:' once, e.g. 'mfa:{tenant}:'")
    if prefix_template not in _TENANT_DATA:
        _TENANT_DATA.append(prefix_template)
    if channel is not None and channel not in _TENANT_DATA_CHANNELS:
        _TENANT_DATA_CHANNELS.append(channel)


def registered_tenant_data() -> tuple[str, ...]:
    return tuple(_TENANT_DATA)


def _closing(iterator: AsyncIterator[Any]) -> contextlib.AbstractAsyncContextManager[Any]:
    # Close a half-read log_read generator at once instead of leaving it to the GC.
    return contextlib.aclosing(iterator) if hasattr(iterator, "aclose") else contextlib.nullcontext()


class _NothingToAnchor(Exception):
    """Raised inside the chain lock when the head needs no anchor (``head``: the anchor record
    already on the head, None for an empty trail)."""

    def __init__(self, head: dict[str, Any] | None) -> None:
        super().__init__()
        self.head = head


class _RefuseToSign(Exception):
    """The trail does not verify (or changed under the check): its head is not signed."""


class AuditTrail:
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
        async with _closing(self._store.log_read(stream_name(tenant), end_seq=end_seq)) as rows:
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
        async with _closing(self._store.log_read(stream, end_seq=expected_last)) as rows:
            async for seq, raw in rows:
                if not checker.feed(decode_record(raw), position=seq):
                    break
        return checker.finish(expected_last=expected_last), checker.last_hash

    # -- anchors ---------------------------------------------------------------------------
    async def anchor_keys(self, *, max_age: float = 0.0) -> _anchors.AnchorKeys:
        """Every key that signed an anchor (``GET /admin/audit/jwks``). ``max_age``: an answer
        read from the store at most this many seconds ago will do (the public endpoint, which
        must not let unauthenticated requests drive store reads)."""
        if self._anchoring is None:
            return _anchors.AnchorKeys({})
        now = time.monotonic()
        if self._keys_cache is not None and now - self._keys_cache[0] < max_age:
            return self._keys_cache[1]
        keys = await self._anchoring.archive.load()
        self._keys_cache = (now, keys)
        return keys

    async def anchor(self, tenant: str) -> dict[str, Any] | None:
        """Sign ``tenant``'s head as an ``audit.anchor`` record; None when there is nothing to
        sign (an empty trail, or its head is an anchor already), when the trail does not verify
        (refused and logged: a forger must not get a rewrite signed) or anchors are off. Needs
        the store (StoreUnavailable)."""
        return (await self._sign_head(tenant))[0]

    async def _sign_head(self, tenant: str) -> tuple[dict[str, Any] | None, int | None]:
        """(the anchor written or None, the seq of the valid anchor now on the head or None)."""
        anchoring = self._anchoring
        if anchoring is None:
            return None, None
        try:
            key = anchoring.signer.active
        except RuntimeError:  # keys not read yet: the store has not answered since start
            raise StoreUnavailable("the signing keys are not loaded yet") from None
        await anchoring.archive.ensure(key)  # archived before any anchor it signs exists
        stream = stream_name(validate_tenant(tenant))
        keys = await anchoring.archive.load()
        if keys.public_key(key.kid) is None:
            # The store lost the archive entry since this process wrote it (a reset, a rollback):
            # archive the key again, or every anchor it signs would read as forged.
            anchoring.archive.forget_cache()
            await anchoring.archive.ensure(key)
            keys = await anchoring.archive.load()
        # SECURITY: verify before signing (outside the chain lock: it may read the whole trail).
        checked = await self._verified_head(tenant, keys)
        if isinstance(checked, str):
            log.error("audit.anchor_refused", tenant=tenant, problem=checked)
            return None, None
        checked_seq, checked_hash = checked

        async def build(head_seq: int, head_hash: str) -> dict[str, Any]:
            if head_seq < checked_seq:
                raise _RefuseToSign(f"the trail shrank to record {head_seq} while it was checked")
            digests: list[str] = []
            first, previous = head_seq + 1, 0
            # Records appended since the check must link to the checked head.
            link = ChainVerifier(tenant=tenant, trust_start=True)
            # The records since the previous anchor (at most MAX_DIGESTS): what a verifier
            # needs to name the first record a rewrite changed.
            window = max(1, min(head_seq - _anchors.MAX_DIGESTS + 1, checked_seq))
            async with _closing(self._store.log_read(stream, start_seq=window, end_seq=head_seq)) as rows:
                async for seq, raw in rows:
                    rec = decode_record(raw) or {}
                    if seq >= checked_seq and checked_seq and not link.feed(rec, position=seq):
                        raise _RefuseToSign(str(link.problem))
                    if seq == checked_seq and rec.get("hash") != checked_hash:
                        raise _RefuseToSign(f"record {seq} changed while the trail was checked")
                    if seq < head_seq - _anchors.MAX_DIGESTS + 1:
                        continue  # read only to link the checked head
                    if rec.get("event") == _anchors.ANCHOR_EVENT:
                        details = rec.get("details")
                        kid = details.get("kid") if isinstance(details, dict) else None
                        if seq == head_seq and keys.revoked_at(kid) is None:
                            # (a revoked key's anchor on the head is signed over by the new key)
                            raise _NothingToAnchor(rec)
                        # It signed what came before; its own record (actor, time) is covered here.
                        first, digests, previous = seq, [], seq
                    elif seq != first + len(digests):
                        first, digests, previous = seq, [], 0  # keep the digests contiguous
                    digests.append(_anchors.digest(rec.get("hash")))
            if checked_seq and link.first_seq != checked_seq:
                raise _RefuseToSign(f"record {checked_seq} is gone since the trail was checked")
            if head_seq == 0:
                raise _NothingToAnchor(None)
            stamp = format_time(self._clock())
            statement = _anchors.Statement(
                tenant, head_seq, head_hash, stamp, first, "".join(digests), previous
            )
            return build_record(
                seq=head_seq + 1,
                time=stamp,
                tenant=tenant,
                event=_anchors.ANCHOR_EVENT,
                actor=GATEWAY_ACTOR,
                request_id=None,
                incident=None,
                details=_anchors.sign(statement, key),
                prev_hash=head_hash,
            )

        try:
            rec = await self._chain.append_built(tenant, build)
        except _RefuseToSign as refused:
            log.error("audit.anchor_refused", tenant=tenant, problem=str(refused))
            return None, None
        except _NothingToAnchor as nothing:
            head = nothing.head
            if head is None:
                return None, None
            try:
                # Another instance anchored this head: keep it as this instance's last anchor
                # too, so a later cut below it is caught here as well.
                statement = _anchors.check_anchor_record(head, keys)
            except _anchors.AnchorInvalid:
                return None, None  # verify reports it; never keep an anchor that does not check
            if statement.seq != head["seq"] - 1 or statement.hash != head.get("prev_hash"):
                return None, None
            await self._keep_last(tenant, head)
            return None, int(head["seq"])
        await self._keep_last(tenant, rec)
        return rec, int(rec["seq"])

    async def _keep_last(self, tenant: str, rec: Mapping[str, Any]) -> None:
        assert self._anchoring is not None
        kept = {**rec["details"], "tenant": tenant, "record_seq": rec["seq"], "record_hash": rec["hash"]}
        await self._anchoring.keep(tenant, kept)

    async def _verified_head(self, tenant: str, keys: _anchors.AnchorKeys) -> tuple[int, str] | str:
        """(seq, hash) of the head once the trail verifies, or the problem. The records from
        the newest valid anchor among the last ``MAX_DIGESTS`` on are enough (the anchor vouches
        for everything before it); without one the whole trail is verified."""
        stream = stream_name(tenant)
        head = await self._store.log_length(stream)
        if head == 0:
            return 0, GENESIS_HASH
        last = await self._chain.read_one(stream, head)
        if last is not None and last.get("event") == _anchors.ANCHOR_EVENT and last.get("seq") == head:
            # The periodic pass over already signed heads: a valid anchor there needs no more.
            try:
                statement = _anchors.check_anchor_record(last, keys)
                intact = last.get("hash") == compute_hash(last)
            except (_anchors.AnchorInvalid, TypeError, ValueError):
                statement, intact = None, False
            details = last.get("details")
            kid = details.get("kid") if isinstance(details, dict) else None
            if (
                statement is not None
                and intact
                and keys.revoked_at(kid) is None
                and (statement.seq, statement.hash) == (head - 1, last.get("prev_hash"))
            ):
                return head, str(last["hash"])
        rows = []
        start = max(1, head - _anchors.MAX_DIGESTS + 1)
        async with _closing(self._store.log_read(stream, start_seq=start, end_seq=head)) as read:
            async for seq, raw in read:
                rows.append((seq, decode_record(raw)))
        for index in range(len(rows) - 1, -1, -1):
            seq, rec = rows[index]
            if rec is None or rec.get("event") != _anchors.ANCHOR_EVENT:
                continue
            # Old unsigned records after the anchor this instance itself kept as the last one are
            # an outage (the gateway was down, or replayed a spool), not removed anchors: this
            # instance knows no later anchor that could have been removed.
            known = await self._anchoring.newest(tenant) if self._anchoring is not None else None
            own = known is not None and (known.get("record_seq"), known.get("record_hash")) == (
                seq,
                rec.get("hash"),
            )
            checker = ChainVerifier(
                tenant=tenant,
                trust_start=True,
                anchor_keys=keys,
                last_anchor=known,  # a newer kept anchor must still be there
                unsigned_before=None if own else self._unsigned_before(),
            )
            for at, later in rows[index:]:
                if not checker.feed(later, position=at):
                    break
            result = checker.finish(expected_last=head)
            if result.ok and result.anchors and checker.first_seq == seq:
                return head, checker.last_hash
            break  # the newest anchor does not verify: the full check names what is wrong
        result, last_hash = await self._verify(tenant, keys)
        if not result.ok:
            return str(result.problem)
        return result.last_seq or 0, last_hash

    async def revoke_anchor_keys(self, kids: Sequence[str]) -> int:
        """``keys rotate --revoke-old``: mark ``kids`` revoked (``REVOCATION_GRACE`` from now) in
        the anchor-key archive (their anchors count only if signed before), then sign every
        trail's head with the active key. Returns how many anchors were written."""
        if self._anchoring is None:
            return 0
        # Other instances may sign with the old key until they load the rotation (pub/sub, at
        # worst their resync): their anchors must not read as forged.
        at = format_time(self._clock() + _anchors.REVOCATION_GRACE)
        marked = await self._anchoring.archive.revoke(kids, at)
        if marked:
            log.warning("audit.anchor_keys_revoked", kids=marked)
        self._keys_cache = None
        return await self.anchor_all()

    def forget_anchor_keys(self) -> None:
        """A store reset: the archive may be gone or older; re-check it before the next anchor."""
        self._keys_cache = None
        if self._anchoring is not None:
            self._anchoring.archive.forget_cache()

    async def anchor_all(self) -> int:
        """``anchor`` every trail; returns how many anchors were written."""
        written = 0
        for tenant in await self.tenants():
            written += await self.anchor(tenant) is not None
        return written

    # -- retention and purge ---------------------------------------------------------------
    async def apply_retention(self, tenant: str, older_than_seconds: float) -> int:
        """Remove the oldest records, up to the first one not older than the cutoff, behind an
        ``audit.checkpoint``; returns how many were removed. Needs the store (StoreUnavailable)."""
        stream = stream_name(validate_tenant(tenant))
        cutoff = format_time(self._clock() - older_than_seconds)
        through, last_hash, count = 0, GENESIS_HASH, 0
        # A prefix only: trimming works by seq, and a spool replay can put an old time after a
        # newer one, so the scan stops at the first record that must stay.
        async with _closing(self._store.log_read(stream)) as rows:
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

    async def purge_tenant(
        self, tenant: str, *, actor: str | None, request_id: str | None = None
    ) -> dict[str, Any]:
        """Delete ``tenant``'s registered data and its trail, leaving one ``tenant.purged``
        record that still verifies; audited in ``_system`` too. Idempotent."""
        if validate_tenant(tenant) == SYSTEM_TENANT:
            raise ValueError("the _system trail cannot be purged")
        stream = stream_name(tenant)
        # Queued and spooled events of this process for the tenant are purged as well.
        await self.flush()
        await self.replay_spool()
        prefixes = [template.format(tenant=tenant) for template in _TENANT_DATA]
        deleted_keys = 0
        for prefix in prefixes:
            deleted_keys += await self._store.delete_prefix(prefix)
        for channel in _TENANT_DATA_CHANNELS:
            # SECURITY: a purged tenant's support grants must stop on every instance at once
            # (within 1 s, like a kill switch), not at each instance's next resync.
            await self._store.publish(channel, b"")
        counted_through = await self._store.log_length(stream)
        counted = await self._chain.count(tenant, 1, counted_through)
        summary: dict[str, Any] = {}

        async def build(head_seq: int, head_hash: str) -> dict[str, Any]:
            removed = counted + await self._chain.count(tenant, counted_through + 1, head_seq)
            summary.update(removed_records=removed, data_prefixes=prefixes, deleted_keys=deleted_keys)
            details = {**summary, "removed_through_seq": head_seq, "removed_last_hash": head_hash}
            return build_record(
                seq=head_seq + 1,
                time=format_time(self._clock()),
                tenant=tenant,
                event=PURGED_EVENT,
                actor=actor,
                request_id=request_id,
                incident=None,
                details=details,
                prev_hash=head_hash,
            )

        purged = await self._chain.append_built(tenant, build)
        await self.anchor(tenant)  # signed before the cut (see apply_retention)
        await self._store.log_trim(stream, purged["seq"] - 1)
        await self.record(
            PURGED_EVENT,
            tenants=[SYSTEM_TENANT],
            actor=actor,
            request_id=request_id,
            details={"tenant": tenant, **summary},
        )
        return summary
