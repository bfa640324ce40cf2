"""Session revocation epochs (SPEC §5 "Revocation", §14; issue 4 item 5).

``revoke(tenant)`` / ``revoke(tenant, user)`` records an *epoch*: every token of that tenant (or
of that user in that tenant) whose ``iat`` is at or before the epoch is refused, on every
instance, within a second. ``is_revoked`` answers from an in-memory snapshot (a
``SyncedSnapshot``), so the request path never makes a store round trip.

Store layout
------------
* One hash per tenant, ``revocations:{tenant}:``. A tenant purge does not delete it: it seals
  it (``seal_tenant``: one tenant-wide epoch, the per-user entries dropped). Each field is the
  JSON text of ``["*", epoch]`` (whole tenant) or ``["u", user, epoch]`` (one user); the value
  is the epoch as RFC 3339, for humans reading the store. JSON makes the field unambiguous for
  any user id (``:``, ``|``, control chars).
* One set, ``revocations-index``, of tenants that have a hash, so a load reads exactly the
  hashes that exist: ``smembers`` + one ``hgetall`` per tenant (issued concurrently, in
  batches). The alternative, ``keys("revocations:")``, is a SCAN of the *whole* Redis keyspace
  (rate-limit counters included) on every resync of every instance: fine for small deployments,
  but its cost grows with unrelated keys, while the index costs O(revoked tenants).

Why the epoch lives in the field name (security)
-------------------------------------------------
The store has no compare-and-set, so "epoch = max(stored, now)" as a read-then-``hset`` of one
field would lose updates: two admins revoking at once on two instances (clocks a little apart)
could leave the *smaller* epoch stored, silently un-revoking tokens issued in between. Instead
every revocation adds a field of its own; the effective epoch of a scope is the maximum of its
fields, and a union of writes can only grow. ``revoke`` then deletes the fields of the same
scope that are strictly smaller than the one it has written. That compaction never removes the
maximum: a field is only deleted by a writer that has already stored a larger one, so every
chain of deletions ends at a field nobody deletes.

Index pruning after a purge
---------------------------
``purge_tenant`` deletes the hash but cannot know about the index, so a load that finds an
indexed tenant with an empty hash removes it from the index, then reads the hash again and
re-adds the tenant if it is non-empty. ``revoke`` writes the hash *before* adding to the index.
Together these make a revocation racing the pruning safe: if the revocation's ``hset`` lands
before the re-read, the loader re-adds the tenant; if it lands after, the revocation's own
``sadd`` comes after the loader's ``srem``. Either way the index ends up containing the tenant.

Time resolution (conservative choice)
-------------------------------------
Epochs keep the clock's full precision, while ``iat`` arrives as whole seconds (the JWT layer
truncates). ``iat <= epoch`` therefore also refuses a token issued later in the *same second*
as the revocation: a user who logs in again right after a revocation may need up to a second
before the new token is accepted. Refusing a fresh token briefly is harmless; accepting a stale
one is not. (An issuer that *rounds* iat up instead of truncating could get a token issued in
the last half second before a revocation through; clock skew between an issuer and the gateway
has the same effect and no gateway-side rule can fix either.)

Failure modes
-------------
* Store down: every instance keeps enforcing its last snapshot (``healthy`` is False) and
  ``revoke`` raises ``StoreUnavailable`` (retrying is safe: revocation is idempotent).
* Never loaded (started while the store was down): ``is_revoked`` raises
  ``RevocationsUnavailable`` (503) instead of guessing "not revoked" - after a restart the
  revocations that must survive it (SPEC §14) are not known yet, so we fail closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

import orjson

from gateway.audit.record import format_time, validate_tenant
from gateway.errors import NotReady
from gateway.state.base import StateStore
from gateway.state.generation import StoreGeneration
from gateway.state.sync import SnapshotBacked, SyncedSnapshot

REVOCATION_CHANNEL = "revocations"
REVOCATION_PREFIX_TEMPLATE = "revocations:{tenant}:"
REVOCATION_INDEX = "revocations-index"
# Not registered with register_tenant_data: a purge must never make a revoked token valid again
# (App. C). The purge seals the tenant instead (``seal_tenant``).

_MAX_USER_BYTES = 1024  # bounds field size; JWT subjects are far shorter in practice
_LOAD_BATCH = 32  # concurrent hgetall calls per batch: leaves Redis pool room for request traffic

log = logging.getLogger(__name__)


class RevocationsUnavailable(NotReady):
    """Revocations have never been loaded, so no token can be vouched for (fail closed)."""

    title = "Revocation list not loaded"


@dataclass(frozen=True, slots=True)
class TenantEpochs:
    """The effective epochs of one tenant: whole-tenant (``tenant``) and per user."""

    tenant: float | None = None
    users: Mapping[str, float] = field(default_factory=dict)


Snapshot = Mapping[str, TenantEpochs]


class RevocationListing(TypedDict):
    """Admin view of one tenant's revocations, epochs as RFC 3339 UTC strings."""

    tenant: str | None
    users: dict[str, str]


def _key(tenant: str) -> str:
    return REVOCATION_PREFIX_TEMPLATE.format(tenant=tenant)


def _field(user: str | None, epoch: float) -> str:
    parts: list[Any] = ["*", epoch] if user is None else ["u", user, epoch]
    return orjson.dumps(parts).decode()


def _parse_field(raw: str) -> tuple[str | None, float]:
    """``(user or None, epoch)``; ``ValueError`` for anything this module did not write."""
    try:
        parts = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    match parts:
        case ["*", int() | float() as epoch]:
            user = None
        case ["u", str(user), int() | float() as epoch] if user:
            pass
        case _:
            raise ValueError("unexpected shape")
    if isinstance(epoch, bool) or not math.isfinite(epoch) or epoch < 0:
        raise ValueError("bad epoch")
    return user, float(epoch)


def _parse_fields(tenant: str, fields: Mapping[str, bytes]) -> dict[str, tuple[str | None, float]]:
    parsed: dict[str, tuple[str | None, float]] = {}
    for raw in fields:
        try:
            parsed[raw] = _parse_field(raw)
        except ValueError as exc:
            # Only a bug or tampering writes these. Skipping one field is better than failing the
            # whole load, which would freeze every tenant's revocations at the last snapshot.
            log.error("revocations of tenant %s: ignoring malformed field (%s)", tenant, exc)
    return parsed


def _epochs(parsed: Mapping[str, tuple[str | None, float]]) -> TenantEpochs:
    # The effective epoch of a scope is the maximum of its fields (see the module docstring).
    whole: float | None = None
    users: dict[str, float] = {}
    for user, epoch in parsed.values():
        if user is None:
            whole = epoch if whole is None else max(whole, epoch)
        else:
            users[user] = max(users.get(user, epoch), epoch)
    return TenantEpochs(whole, users)


def _validate_user(user: object) -> str:
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a non-empty string")
    if len(user.encode("utf-8")) > _MAX_USER_BYTES:  # UnicodeEncodeError (a ValueError) on lone surrogates
        raise ValueError(f"user id longer than {_MAX_USER_BYTES} bytes")
    return user


class RevocationEpochs(SnapshotBacked):
    """Write revocation epochs to the store and enforce them from an in-memory snapshot."""

    def __init__(
        self,
        store: StateStore,
        *,
        clock: Callable[[], float] = time.time,
        resync: float = 5.0,
        retry: float = 1.0,
        generation: StoreGeneration | None = None,
    ) -> None:
        self._store, self._clock = store, clock
        self._generation = generation  # App. C: epochs a reset store forgot stay enforced
        # resync bounds propagation when a pub/sub message is lost (e.g. a subscriber reconnecting).
        self._snapshot: SyncedSnapshot[Snapshot] = SyncedSnapshot(
            store, REVOCATION_CHANNEL, self.load, resync=resync, retry=retry
        )

    # -- the hot path --------------------------------------------------------------------------
    def is_revoked(self, tenant: str, user: str, issued_at: float) -> bool:
        """True when a token of ``user`` in ``tenant`` issued at ``issued_at`` (the ``iat``
        claim, Unix seconds) is revoked: ``iat <= epoch`` for the tenant or the user epoch.
        Memory only. Raises ``RevocationsUnavailable`` before the first successful load."""
        snapshot = self._snapshot.value
        # loaded_at is set with the first loaded value (an attribute: this runs every request).
        if snapshot is None or self._snapshot.loaded_at is None:
            # SECURITY: fail closed - an instance that has not read the revocations yet cannot
            # tell a revoked token from a good one (they must survive restarts, SPEC §14).
            raise RevocationsUnavailable("revocation list not loaded yet")
        if isinstance(issued_at, float) and not math.isfinite(issued_at):
            return True  # SECURITY: NaN compares false with everything; never let it through
        entry = snapshot.get(tenant)
        if entry is None:
            return False
        # SECURITY: "<=" refuses tokens issued in the revocation's own second (module docstring).
        if entry.tenant is not None and issued_at <= entry.tenant:
            return True
        epoch = entry.users.get(user)
        return epoch is not None and issued_at <= epoch

    # -- writing -------------------------------------------------------------------------------
    async def revoke(self, tenant: str, user: str | None = None) -> float:
        """Revoke every token of ``tenant`` (or of ``user`` in ``tenant``) issued at or before
        now, on every instance. Returns the effective epoch (never lower than an earlier one
        for the same scope). ``ValueError`` for a bad tenant or user id; ``StoreUnavailable``
        when the store is down (safe to retry)."""
        validate_tenant(tenant)
        if user is not None:
            _validate_user(user)
        now = float(self._clock())
        if not math.isfinite(now) or now <= 0:
            raise ValueError("clock returned an invalid time")
        key = _key(tenant)
        parsed = _parse_fields(tenant, await self._store.hgetall(key))
        same_scope = {raw: epoch for raw, (owner, epoch) in parsed.items() if owner == user}
        # Never move backwards, even when this instance's clock is behind the one that wrote the
        # last revocation: the stored maximum already covers "now" then.
        epoch = max(now, *same_scope.values()) if same_scope else now
        # SECURITY: a field of its own, not an overwrite - concurrent revocations cannot lose
        # each other's (larger) epochs. Hash before index: see "Index pruning" above.
        await self._store.hset(key, _field(user, epoch), format_time(epoch).encode())
        superseded = [raw for raw, old in same_scope.items() if old < epoch]
        if superseded:
            await self._store.hdel(key, *superseded)
        await self._store.sadd(REVOCATION_INDEX, tenant)
        # Enforced here at once, before the pub/sub round trip reaches our own snapshot.
        self._merge(tenant, user, epoch)
        if self._generation is not None:
            await self._generation.bump()  # a store that comes back without it has gone back
        await self._store.publish(REVOCATION_CHANNEL, b"")
        log.info(
            "revoked %s tokens of tenant %s issued at or before %s",
            "all" if user is None else "one user's",
            tenant,
            format_time(epoch),
        )
        return epoch

    async def seal_tenant(self, tenant: str) -> float:
        """For a tenant purge: revoke every token of ``tenant`` issued until now, then drop the
        per-user entries (user ids may be personal data, which a purge removes). The tenant-wide
        epoch is written first and is at least every user epoch, so at no moment is a revoked
        token honoured again."""
        epoch = await self.revoke(tenant)
        key = _key(tenant)
        parsed = _parse_fields(tenant, await self._store.hgetall(key))
        covered = [raw for raw, (owner, at) in parsed.items() if owner is not None and at <= epoch]
        if covered:
            await self._store.hdel(key, *covered)
            await self._store.publish(REVOCATION_CHANNEL, b"")
        return epoch

    def _merge(self, tenant: str, user: str | None, epoch: float) -> None:
        if self._snapshot.value is None or not self._snapshot.loaded:
            return  # the first load will read it from the store

        def patch(current: Snapshot) -> Snapshot:
            # Idempotent (a maximum): also applied on top of a load that overlapped the write.
            entry = current.get(tenant, TenantEpochs())
            if user is None:
                whole = epoch if entry.tenant is None else max(entry.tenant, epoch)
                merged = TenantEpochs(whole, entry.users)
            else:
                merged = TenantEpochs(
                    entry.tenant, {**entry.users, user: max(entry.users.get(user, epoch), epoch)}
                )
            # Copy-on-write: the snapshot a reader holds is never mutated under it.
            return {**current, tenant: merged}

        self._snapshot.update(patch)

    # -- reading -------------------------------------------------------------------------------
    async def load(self) -> Snapshot:
        """Read every tenant's epochs (the ``SyncedSnapshot`` loader); prunes index entries of
        purged tenants. Raises ``StoreUnavailable`` when the store is down."""
        since = self._generation.begin() if self._generation is not None else 0
        tenants = sorted(await self._store.smembers(REVOCATION_INDEX))
        snapshot: dict[str, TenantEpochs] = {}
        emptied: list[str] = []
        for start in range(0, len(tenants), _LOAD_BATCH):
            batch = tenants[start : start + _LOAD_BATCH]
            hashes = await asyncio.gather(*(self._store.hgetall(_key(t)) for t in batch))
            for tenant, fields in zip(batch, hashes, strict=True):
                if fields:
                    snapshot[tenant] = _epochs(_parse_fields(tenant, fields))
                else:
                    emptied.append(tenant)
        if self._generation is not None:
            # SECURITY (App. C): read from a store that forgot the epochs, this snapshot would
            # honour revoked tokens again; StoreReset keeps the one in memory (and prunes nothing).
            await self._generation.verify(since)
        for tenant in emptied:
            # Purged (or never written): drop it from the index, then re-check, so a revocation
            # racing this pruning is never lost from the index (module docstring).
            await self._store.srem(REVOCATION_INDEX, tenant)
            fields = await self._store.hgetall(_key(tenant))
            if fields:
                await self._store.sadd(REVOCATION_INDEX, tenant)
                snapshot[tenant] = _epochs(_parse_fields(tenant, fields))
            else:
                log.info("revocations: tenant %s has no epochs left (purged); dropped from index", tenant)
        return snapshot

    async def restore(self) -> tuple[int, int]:
        """Write the epochs held in memory back to a store that was reset (App. C): a union of
        fields, so concurrent writers lose nothing and the effective epoch of every scope is the
        maximum anyone held. Returns (held, written) fields; ``StoreUnavailable``."""
        snapshot = self._snapshot.value
        if snapshot is None or not self._snapshot.loaded:
            return 0, 0
        held = written = 0
        for tenant, epochs in sorted(snapshot.items()):
            fields = {_field(user, at): format_time(at).encode() for user, at in epochs.users.items()}
            if epochs.tenant is not None:
                fields[_field(None, epochs.tenant)] = format_time(epochs.tenant).encode()
            held += len(fields)
            written += await self._store.hash_merge(_key(tenant), fields)  # hash before index
        if snapshot:
            await self._store.sadd(REVOCATION_INDEX, *snapshot)
            await self._store.publish(REVOCATION_CHANNEL, b"")
        return held, written

    async def list(self, tenant: str) -> RevocationListing:
        """The tenant's effective epochs straight from the store, for the admin API."""
        validate_tenant(tenant)
        epochs = _epochs(_parse_fields(tenant, await self._store.hgetall(_key(tenant))))
        return {
            "tenant": None if epochs.tenant is None else format_time(epochs.tenant),
            "users": {user: format_time(epoch) for user, epoch in sorted(epochs.users.items())},
        }

    def snapshot_of(self, tenant: str) -> TenantEpochs | None:
        """This instance's in-memory epochs of ``tenant`` (diagnostics; None if none)."""
        value = self._snapshot.value
        return None if value is None else value.get(tenant)


__all__ = [
    "REVOCATION_CHANNEL",
    "REVOCATION_INDEX",
    "REVOCATION_PREFIX_TEMPLATE",
    "RevocationEpochs",
    "RevocationListing",
    "RevocationsUnavailable",
    "TenantEpochs",
]
