"""``MfaEnrolmentFreeze``: MFA enrolment stops fleet-wide when the shared store was reset.

Why: TOTP enrolments live in the store (``gateway.auth.mfa``). A store that came back empty or
older (SPEC Appendix C, "Store reset") has forgotten who was enrolled, and ``enroll`` refuses a
password-only token only for users it knows to be enrolled. So after a reset, anyone holding a
stolen password could bind their own authenticator and then pass MFA. The gateway cannot tell
a first enrolment from such a re-enrolment once the store forgot, so it fails closed: from the
moment a reset is noticed, ``enroll`` and ``activate`` answer 503 ``mfa-enrolment-frozen`` on
every instance until an operator lifts the freeze (``DELETE /admin/mfa/freeze``, CLI ``mfa
unfreeze``) or lets one checked user enrol once (``POST /admin/mfa/allowances``, CLI ``mfa
allow``). Verification of enrolments the store still holds is untouched.

Where the freeze lives:

- in the memory of every instance that noticed the reset, from that moment (``noticed``, a
  ``StoreGeneration`` listener): it holds before the store has it and whatever the store says;
- in the store under ``FREEZE_KEY``, as a record bound to the store generation (the marker)
  that the write-back settled on. It is written as part of the write-back (``reload``, after
  the marker is renewed: the record names that marker) and by the background ``sync`` while
  this instance holds a freeze the store lacks, so instances that start later obey it too. The
  request path only reads it (bounded by ``store_timeout``). The instance whose write created
  the record files ``mfa.enrolment_frozen`` in ``_system``.

A lift is a record too (``state: lifted`` for that generation), never an absence: an instance
holding a freeze learns from it that the operator lifted this very freeze, not that the store
forgot it. A later reset binds a new generation, so an old lift never lifts a new freeze.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import orjson
import structlog

from gateway.audit import SYSTEM_TRAIL, AuditTrail
from gateway.audit.purge import register_tenant_data
from gateway.audit.record import TENANT_ID_RE
from gateway.errors import BadRequest, Conflict, MfaEnrolmentFrozen, StoreUnavailable
from gateway.state.base import StateStore
from gateway.state.generation import MARKER_KEY, StoreGeneration
from gateway.state.sync import cancel_until_done

FREEZE_KEY = "security:mfa_enrolment_freeze"
# Per-user allowances to enrol during a freeze; per tenant, so a tenant purge removes them.
ALLOW_PREFIX_TEMPLATE = "security:mfa_allow:{tenant}:"
register_tenant_data(ALLOW_PREFIX_TEMPLATE)
REASON_MAX = 500
ALLOW_TTL_DEFAULT = 900.0
ALLOW_TTL_MAX = 24 * 3600.0
_MAX_USER_BYTES = 1024

log = structlog.get_logger("gateway.mfa")


@dataclass(frozen=True)
class Freeze:
    """One freeze (or, ``state == "lifted"``, its lift) as stored under ``FREEZE_KEY``."""

    id: str  # names the freeze to operators; shared by the fleet once the record is stored
    reason: str  # what the store reset detection said ("marker missing", ...)
    since: float
    instance: str  # the instance whose detection is on record
    generation: str | None = None  # the store marker it freezes; None until the write-back
    state: Literal["frozen", "lifted"] = "frozen"
    lifted_at: float | None = None
    lifted_by: str | None = None
    lift_reason: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | None) -> Freeze | None:
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (orjson.JSONDecodeError, TypeError, KeyError):
            # SECURITY: a record that cannot be read is not a lift: treat it as frozen.
            return cls(id="unreadable", reason="unreadable freeze record", since=0.0, instance="?")

    def public(self) -> dict[str, Any]:
        """What the admin API shows (the store marker stays internal)."""
        data = asdict(self)
        data.pop("generation")
        return data


@dataclass(frozen=True)
class Allowance:
    """One user may enrol (once) during the freeze ``freeze``, until ``expires_at``."""

    tenant: str
    user: str
    freeze: str
    actor: str
    reason: str
    created_at: float
    expires_at: float

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | None) -> Allowance | None:
        if raw is None:
            return None
        try:
            data = orjson.loads(raw)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return None  # an unreadable allowance allows nothing


def allowance_key(tenant: str, user: str) -> str:
    """``BadRequest`` for a malformed tenant or user (the rules of tokens' tenants and MFA)."""
    if not isinstance(tenant, str) or not TENANT_ID_RE.fullmatch(tenant):
        raise BadRequest("Invalid tenant")  # "_system" included: nobody enrols there
    raw = user.encode("utf-8") if isinstance(user, str) else b""
    if not raw or len(raw) > _MAX_USER_BYTES:
        raise BadRequest("Invalid user")
    u = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return ALLOW_PREFIX_TEMPLATE.format(tenant=tenant) + u


class MfaEnrolmentFreeze:
    def __init__(
        self,
        store: StateStore,
        generation: StoreGeneration | None,
        audit: AuditTrail,
        *,
        instance_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store, self._generation, self._audit = store, generation, audit
        self._instance_id, self._clock = instance_id, clock
        self.held: Freeze | None = None  # this instance's freeze; generation None: not written yet
        self._lock = asyncio.Lock()  # one reconciliation at a time per instance
        self._task: asyncio.Task[None] | None = None
        if generation is not None:
            generation.on_reset(self.noticed)

    # -- detection (synchronous: holds from the moment the reset is noticed) -------------------
    def noticed(self, reason: str) -> None:
        """A store reset was noticed: freeze now, in memory; the write-back stores it."""
        self.held = Freeze(
            id=secrets.token_hex(6), reason=reason, since=self._clock(), instance=self._instance_id
        )
        _gauge(True)
        log.warning(
            "mfa_enrolment_frozen",
            reason=reason,
            instance=self._instance_id,
            detail="MFA enrolment refused until an operator lifts the freeze (mfa unfreeze)",
        )

    # -- Restorable (StoreRestorer) ------------------------------------------------------------
    async def restore(self) -> tuple[int, int]:
        # The record names the marker the write-back settles on, known only after the renewal:
        # it is written by ``reload`` (called right after it), not here.
        return (1 if self.held is not None else 0), 0

    async def reload(self) -> bool:
        if self.held is not None and self.held.generation is None and self._generation is not None:
            known = self._generation.known
            if self._generation.pending is None and known is not None:
                self.held = replace(self.held, generation=known.decode("ascii", "replace"))
        await self.sync()
        return True

    # -- the freeze as the fleet sees it ------------------------------------------------------
    async def sync(self, *, write: bool = True) -> Freeze | None:
        """Reconcile memory and store; the freeze in force (None: enrolment open). With
        ``write=False`` (the request path) only reads: a freeze the store lacks is written by
        the write-back and the background loop. ``StoreUnavailable``."""
        if not write:
            current = await self._reconcile(write=False)
        else:
            async with self._lock:
                current = await self._reconcile(write=True)
        _gauge(current is not None or self.held is not None)
        return current

    async def _reconcile(self, *, write: bool) -> Freeze | None:
        for _ in range(3):  # a concurrent writer changed the record: read again
            raw = await self._store.get(FREEZE_KEY)
            record = Freeze.decode(raw)
            held = self.held
            if held is None:
                return record if record is not None and record.state == "frozen" else None
            if held.generation is None:
                return held  # the write-back has not settled yet: memory rules
            if record is not None and record.generation == held.generation:
                if record.state == "lifted":
                    self.held = None
                    log.info("mfa_enrolment_unfrozen", freeze=record.id, instance=self._instance_id)
                    return None
                self.held = record  # the fleet's id for this freeze
                return record
            if not write:
                return held
            # The store lacks this freeze. Write it only while the store still has the marker
            # it names: otherwise a newer reset is under way, which brings its own.
            marker = await self._store.get(MARKER_KEY)
            if marker is None or marker.decode("ascii", "replace") != held.generation:
                return held
            stored = await self._store.compare_and_set(FREEZE_KEY, raw, held.encode())
            if stored == held.encode():
                await self._audit_frozen(held)
                return held
        return self.held

    async def check_enrolment(
        self, timeout: float | None = None, *, tenant: str | None = None, user: str | None = None
    ) -> bool:
        """Before an enrolment or activation: ``MfaEnrolmentFrozen`` while frozen, unless an
        operator allowed this user (then True: an activation consumes it). Waits on the store
        at most ``timeout`` seconds (it runs on the request path): then a freeze held in memory
        still refuses, otherwise ``StoreUnavailable``."""
        try:
            async with asyncio.timeout(timeout):
                return await self._check_enrolment(tenant, user)
        except TimeoutError:
            if self.held is not None:
                raise _refusal() from None
            raise StoreUnavailable("the state store did not answer in time") from None

    async def _check_enrolment(self, tenant: str | None, user: str | None) -> bool:
        # Enrolment is rare: it may pay two GETs to notice a reset now, not at the next probe
        # (up to a second later), so no enrolment slips into that window. A reset pending that
        # this freeze was not told of refuses too.
        generation = self._generation
        if self.held is None and generation is not None and await generation.check() and self.held is None:
            raise _refusal()
        in_force: Freeze | None
        if self.held is not None:
            # SECURITY: memory first - the store may be the very thing that forgot.
            try:
                await self.sync(write=False)  # learns a lift made through another instance
            except StoreUnavailable:
                raise _refusal() from None
            in_force = self.held  # None when the sync learnt of a lift
        else:
            in_force = await self.sync(write=False)
        if in_force is None:
            return False
        if tenant is not None and user is not None and await self._allowed(tenant, user, in_force):
            return True
        raise _refusal()

    async def _allowed(self, tenant: str, user: str, in_force: Freeze) -> bool:
        allowance = Allowance.decode(await self._store.get(allowance_key(tenant, user)))
        # Bound to the freeze it was given under: a later reset's freeze needs a new decision.
        return (
            allowance is not None
            and in_force.generation is not None
            and allowance.freeze == in_force.id
            and allowance.tenant == tenant
            and allowance.user == user
            and allowance.expires_at > self._clock()
        )

    async def allow(
        self,
        tenant: str,
        user: str,
        *,
        ttl: float,
        actor: str,
        reason: str,
        request_id: str | None = None,
    ) -> Allowance:
        """An operator lets one user enrol once during the freeze in force (after checking who
        they are outside the gateway); audited in the tenant's trail and ``_system``.
        ``Conflict`` when no freeze is stored and in force. ``StoreUnavailable``."""
        key = allowance_key(tenant, user)
        current = await self.sync()
        held = self.held
        if held is not None and (current is None or current.generation is None or held.id != current.id):
            raise Conflict("A state store reset is being written back; try again once it is done")
        if current is None:
            raise Conflict("MFA enrolment is not frozen; every user may enrol")
        now = self._clock()
        allowance = Allowance(
            tenant=tenant,
            user=user,
            freeze=current.id,
            actor=actor,
            reason=reason,
            created_at=now,
            expires_at=now + ttl,
        )
        await self._store.set(key, allowance.encode(), ttl=ttl)
        await self._audit.record(
            "mfa.enrolment_allowed",
            tenants=[tenant, SYSTEM_TRAIL],
            actor=actor,
            request_id=request_id,
            details={
                "user": user,
                "freeze": current.id,
                "reason": reason,
                "expires_at": allowance.expires_at,
            },
        )
        return allowance

    async def consume_allowance(self, tenant: str, user: str) -> None:
        """After an activation the allowance let through: it is used up (one enrolment)."""
        if await self._store.delete(allowance_key(tenant, user)):
            try:
                await self._audit.record(
                    "mfa.enrolment_allowance_used", tenants=[tenant], actor=user, details={}
                )
            except (OSError, ValueError):
                log.error("mfa_allowance_use_unaudited", instance=self._instance_id)

    async def status(self) -> dict[str, Any]:
        try:
            current, stale = await self.sync(), False
        except StoreUnavailable:
            current, stale = self.held, True
        held = self.held
        return {
            "frozen": current is not None,
            "freeze": current.public() if current is not None else None,
            "held_by_this_instance": held is not None,
            "written_back": held is None or held.generation is not None,
            "stale": stale,
        }

    async def lift(self, *, actor: str, reason: str, request_id: str | None = None) -> Freeze:
        """An operator lifts the freeze in force (fleet-wide); audited. ``Conflict`` when none
        is in force or a store reset is still being written back. ``StoreUnavailable``."""
        await self.sync()  # first: a freeze this instance holds reaches the store
        async with self._lock:
            raw = await self._store.get(FREEZE_KEY)
            current, held = Freeze.decode(raw), self.held
            if held is not None and (current is None or held.generation != current.generation):
                # Memory holds a freeze the store does not show yet (a write-back under way):
                # lifting what the store shows would leave this one in force.
                raise Conflict("A state store reset is being written back; lift the freeze once it is done")
            if current is None or current.state != "frozen":
                raise Conflict("MFA enrolment is not frozen")
            lifted = replace(
                current, state="lifted", lifted_at=self._clock(), lifted_by=actor, lift_reason=reason
            )
            if await self._store.compare_and_set(FREEZE_KEY, raw, lifted.encode()) != lifted.encode():
                raise Conflict("The freeze changed meanwhile (a new store reset?); look again")
            if self.held is held:  # not a new reset's freeze, noticed while the write ran
                self.held = None
        _gauge(self.held is not None)
        await self._audit.record(
            "mfa.enrolment_unfrozen",
            tenants=[SYSTEM_TRAIL],
            actor=actor,
            request_id=request_id,
            details={
                "freeze": current.id,
                "reason": reason,
                "frozen_since": current.since,
                "reset_reason": current.reason,
            },
        )
        log.info("mfa_enrolment_unfrozen", freeze=current.id, actor=actor, instance=self._instance_id)
        return lifted

    # -- background ----------------------------------------------------------------------------
    async def start(self, interval: float) -> None:
        _gauge(self.held is not None)  # 0 until the first sync says otherwise
        if self._task is None:
            self._task = asyncio.create_task(self._follow(interval), name="mfa-freeze-follow")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_until_done(task)

    async def _follow(self, interval: float) -> None:
        """Retries the write of a freeze the store lacks, learns lifts and freezes made through
        other instances (for the gauge): one GET per interval."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("mfa_freeze_sync_failed", instance=self._instance_id)

    async def _audit_frozen(self, freeze: Freeze) -> None:
        try:
            await self._audit.record(
                "mfa.enrolment_frozen",
                tenants=[SYSTEM_TRAIL],
                actor="gateway",
                details={
                    "freeze": freeze.id,
                    "reason": freeze.reason,
                    "instance": freeze.instance,
                    "since": freeze.since,
                },
            )
        except (OSError, ValueError):
            log.error("mfa_enrolment_frozen_unaudited", freeze=freeze.id, instance=self._instance_id)


class _Gauge:
    """Created on first use, not at import (prometheus-client waits for the multiprocess dir)."""

    def __init__(self) -> None:
        from prometheus_client import Gauge

        self.frozen = Gauge(
            "shopino_gateway_mfa_enrolment_frozen",
            "1 while MFA enrolment is frozen after a state store reset (an operator must lift it)",
            multiprocess_mode="livemax",
        )


_gauges: _Gauge | None = None


def _gauge(frozen: bool) -> None:
    global _gauges
    if _gauges is None:
        _gauges = _Gauge()
    _gauges.frozen.set(1 if frozen else 0)


def _refusal() -> MfaEnrolmentFrozen:
    return MfaEnrolmentFrozen(
        "MFA enrolment is frozen after a state store reset (enrolments may have been lost); "
        "an operator must lift the freeze before anyone can enrol"
    )


__all__ = [
    "ALLOW_PREFIX_TEMPLATE",
    "ALLOW_TTL_DEFAULT",
    "ALLOW_TTL_MAX",
    "FREEZE_KEY",
    "REASON_MAX",
    "Allowance",
    "Freeze",
    "MfaEnrolmentFreeze",
    "MfaEnrolmentFrozen",
    "allowance_key",
]
