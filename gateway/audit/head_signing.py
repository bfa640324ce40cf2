"""Signing trail heads (App. C): the anchor methods of ``trail.AuditTrail`` (a mixin).

``anchor`` signs a trail's head as an ``audit.anchor`` record built inside the chain lock, so it
always vouches for the record just before it, and only once the trail verifies (a forger must
not get a rewrite signed); ``anchor_all`` does it for every trail whose head is not an anchor
already. The anchor machinery itself (statements, keys, the archive): ``gateway.audit.anchors``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from gateway.audit import anchors as _anchors
from gateway.audit.chain import ChainWriter, closing_reader, stream_name
from gateway.audit.record import (
    GATEWAY_ACTOR,
    GENESIS_HASH,
    build_record,
    compute_hash,
    decode_record,
    format_time,
    validate_tenant,
)
from gateway.audit.verify import ChainVerifier
from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore

log = structlog.get_logger("gateway.audit")


class _NothingToAnchor(Exception):
    """Raised inside the chain lock when the head needs no anchor (``head``: the anchor record
    already on the head, None for an empty trail)."""

    def __init__(self, head: dict[str, Any] | None) -> None:
        super().__init__()
        self.head = head


class _RefuseToSign(Exception):
    """The trail does not verify (or changed under the check): its head is not signed."""


class HeadSigning:
    """The anchor methods of ``AuditTrail``; its state is declared here for the type checker."""

    _store: StateStore
    _chain: ChainWriter
    _clock: Callable[[], float]
    _anchoring: _anchors.Anchoring | None
    _keys_cache: tuple[float, _anchors.AnchorKeys] | None
    tenants: Callable[[], Any]
    _verify: Callable[..., Any]
    _unsigned_before: Callable[[], str | None]

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
            async with closing_reader(
                self._store.log_read(stream, start_seq=window, end_seq=head_seq)
            ) as rows:
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
        async with closing_reader(self._store.log_read(stream, start_seq=start, end_seq=head)) as read:
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
