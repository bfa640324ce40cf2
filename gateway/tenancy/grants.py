"""Support grants (SPEC §7, Appendix B): a tenant's time-limited permission for one support user.

A ``tenant-admin`` of tenant T grants ``grantee`` (the support user's ``sub``) access to some
modules of T for at most 24 h. A token with role ``support`` then acts in T only on routes whose
``tenant_from`` names T and whose ``module`` the grant covers. ``"*"`` covers every module except
``finance`` and ``customers``, which count only when named.

Store layout (like ``gateway.auth.revocation``)
-----------------------------------------------
* One hash per tenant, ``grants:{tenant}:`` (registered with ``register_tenant_data``, so
  ``tenant purge`` removes it and publishes on ``grants``: every instance drops the purged
  grants within a pub/sub round trip): field = grant id, value = the grant as JSON.
* One set, ``grants-index``, of tenants that have a hash, so a load reads only those hashes.
  A load that finds an indexed tenant with an empty hash drops it from the index and reads the
  hash again (re-adding the tenant if a grant landed meanwhile); writers write the hash first.

Enforcement is from memory: a ``SyncedSnapshot`` refreshed by pub/sub on every change (and a
periodic resync) holds every unexpired grant, and ``find`` checks the expiry against the clock
on each request, so expiry is exact and a revocation reaches every instance within a pub/sub
round trip — no store call per request. Before the first load ``find`` raises ``NotReady``
(fail closed: a support user is refused, never waved through).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from gateway.audit.purge import register_tenant_data
from gateway.audit.record import format_time, validate_tenant
from gateway.errors import Conflict, NotReady
from gateway.state.base import StateStore
from gateway.state.generation import StoreGeneration
from gateway.state.sync import SnapshotBacked, SyncedSnapshot

GRANT_CHANNEL = "grants"
GRANT_PREFIX_TEMPLATE = "grants:{tenant}:"
GRANT_INDEX = "grants-index"  # not under "grants:": a tenant purge must not match it
register_tenant_data(GRANT_PREFIX_TEMPLATE, channel=GRANT_CHANNEL)  # a purge reaches every instance

SUPPORT_ROLE = "support"
ALL_MODULES = "*"
SENSITIVE_MODULES = frozenset(("finance", "customers"))  # only when named, never through "*"
MAX_TTL = 24 * 3600.0
MAX_GRANTS_PER_TENANT = 50
GRANT_ID_RE = re.compile(r"g_[A-Za-z0-9_-]{16,43}")
MODULE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_GRANTEE = 256
_LOAD_BATCH = 32
log = logging.getLogger(__name__)


class GrantsUnavailable(NotReady):
    title = "Support grants not loaded"


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    tenant: str
    grantee: str
    modules: tuple[str, ...]
    created_at: float
    expires_at: float
    created_by: str

    def covers(self, module: str | None) -> bool:
        """Whether this grant reaches a route of ``module`` (routes without one: never)."""
        if module is None:
            return False
        if module in self.modules:
            return True
        # SECURITY: "*" never opens finance or customers data; the tenant must name them. Module
        # names in the config are free text, so a route's "Finance" is as sensitive as "finance".
        return ALL_MODULES in self.modules and module.strip().casefold() not in SENSITIVE_MODULES

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["modules"] = list(self.modules)
        data["created_at"] = format_time(self.created_at)
        data["expires_at"] = format_time(self.expires_at)
        return data


Snapshot = Mapping[tuple[str, str], tuple[Grant, ...]]  # (tenant, grantee) → grants


def validate_grant_request(grantee: object, modules: object, ttl: float) -> tuple[str, tuple[str, ...]]:
    """``ValueError`` with a client-safe message for anything a grant may not be."""
    if not isinstance(grantee, str) or not grantee.strip() or len(grantee) > _MAX_GRANTEE:
        raise ValueError("'grantee' must be the support user's id (a non-empty string)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in grantee):
        raise ValueError("'grantee' must not contain control characters")
    if not isinstance(modules, list) or not modules or len(modules) > 32:
        raise ValueError("'modules' must be a non-empty list of module names (or [\"*\"])")
    for module in modules:
        if not isinstance(module, str) or not (module == ALL_MODULES or MODULE_RE.fullmatch(module)):
            raise ValueError("'modules' must be a non-empty list of module names (or [\"*\"])")
    if not 0 < ttl <= MAX_TTL:
        raise ValueError("'ttl' must be more than 0 and at most 24h")
    return grantee, tuple(dict.fromkeys(modules))


def _key(tenant: str) -> str:
    return GRANT_PREFIX_TEMPLATE.format(tenant=tenant)


def _well_typed(data: Any) -> bool:
    """A stored record's fields have the types ``find`` and ``load`` compare: a record that
    would raise there (a string ``expires_at``) would stall every later reload of the snapshot,
    and with it the propagation of revocations."""
    return (
        isinstance(data, dict)
        and all(isinstance(data.get(k), str) for k in ("id", "tenant", "grantee", "created_by"))
        and all(
            isinstance(data.get(k), int | float) and not isinstance(data.get(k), bool)
            for k in ("created_at", "expires_at")
        )
        and isinstance(data.get("modules"), list)
        and all(isinstance(m, str) for m in data["modules"])
    )


def _parse(tenant: str, raw: bytes) -> Grant | None:
    try:
        data = orjson.loads(raw)
        if not _well_typed(data):
            raise TypeError("malformed grant record")
        grant = Grant(**{**data, "modules": tuple(data["modules"])})
    except (orjson.JSONDecodeError, TypeError, KeyError):
        log.error("grants of tenant %s: ignoring a malformed record", tenant)
        return None
    if grant.tenant != tenant:  # SECURITY: a record copied into another tenant's hash is void
        log.error("grants of tenant %s: ignoring a record of another tenant", tenant)
        return None
    return grant


def _encode(grant: Grant) -> bytes:
    return orjson.dumps({**asdict(grant), "modules": list(grant.modules)})


class SupportGrants(SnapshotBacked):
    """Create, list and revoke grants in the store; answer ``find`` from memory."""

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
        self._generation = generation  # App. C: grants a reset store forgot stay honoured
        # Grants that ended here while unexpired (revoked, purged): id → (tenant, expires_at).
        # A store reset's write-back tombstones them, so no instance's older copy revives them.
        self._ended: dict[str, tuple[str, float]] = {}
        self._snapshot: SyncedSnapshot[Snapshot] = SyncedSnapshot(
            store, GRANT_CHANNEL, self.load, resync=resync, retry=retry
        )
        self._live_ids: tuple[Snapshot, frozenset[str]] | None = None

    # -- the hot path --------------------------------------------------------------------------
    def find(self, tenant: str, grantee: str, module: str | None, now: float | None = None) -> Grant | None:
        """An unexpired grant of ``tenant`` to ``grantee`` covering ``module``. Memory only."""
        snapshot = self._snapshot.value
        if snapshot is None or not self._snapshot.loaded:
            raise GrantsUnavailable("support grants not loaded yet")
        now = self._clock() if now is None else now
        for grant in snapshot.get((tenant, grantee), ()):
            if grant.expires_at > now and grant.covers(module):
                return grant
        return None

    def live_ids(self) -> frozenset[str]:
        """Ids of the grants this instance enforces now (a stream under any other grant ends);
        memo per snapshot value, so re-checking many open streams reads the snapshot once."""
        snapshot = self._snapshot.value
        if snapshot is None:
            return frozenset()
        memo = self._live_ids
        if memo is None or memo[0] is not snapshot:
            memo = (snapshot, frozenset(g.id for grants in snapshot.values() for g in grants))
            self._live_ids = memo
        return memo[1]

    # -- writing -------------------------------------------------------------------------------
    async def create(
        self, tenant: str, grantee: str, modules: Sequence[str], ttl: float, created_by: str
    ) -> Grant:
        """Store a new grant (``ValueError`` for bad input, ``Conflict`` over the per-tenant cap,
        ``StoreUnavailable`` when the store is down)."""
        validate_tenant(tenant)
        grantee, unique = validate_grant_request(grantee, list(modules), ttl)
        now = float(self._clock())
        active = [g for g in await self._read_tenant(tenant) if g.expires_at > now]
        if len(active) >= MAX_GRANTS_PER_TENANT:
            raise Conflict(f"A tenant may hold at most {MAX_GRANTS_PER_TENANT} active grants")
        grant = Grant(
            id=f"g_{secrets.token_urlsafe(16)}",
            tenant=tenant,
            grantee=grantee,
            modules=unique,
            created_at=now,
            expires_at=now + ttl,
            created_by=created_by,
        )
        await self._store.hset(_key(tenant), grant.id, _encode(grant))  # hash before index
        await self._store.sadd(GRANT_INDEX, tenant)
        self._merge(add=grant)
        await self._bump()
        await self._store.publish(GRANT_CHANNEL, b"")
        return grant

    async def _bump(self) -> None:
        if self._generation is not None:
            await self._generation.bump()  # a store that comes back without it has gone back

    async def revoke(self, grant_id: str, tenant: str | None = None) -> Grant | None:
        """Delete a grant (only within ``tenant`` when given); None when there is no such grant."""
        if not GRANT_ID_RE.fullmatch(grant_id):
            return None
        tenants = [tenant] if tenant is not None else sorted(await self._store.smembers(GRANT_INDEX))
        for candidate in tenants:
            raw = await self._store.hget(_key(candidate), grant_id)
            grant = _parse(candidate, raw) if raw is not None else None
            if grant is not None and await self._store.hdel(_key(candidate), grant_id) == 1:
                self._ended[grant.id] = (grant.tenant, grant.expires_at)
                self._merge(remove=grant)  # enforced here at once, before the pub/sub round trip
                await self._bump()
                await self._store.publish(GRANT_CHANNEL, b"")
                return grant
        return None

    def _merge(self, *, add: Grant | None = None, remove: Grant | None = None) -> None:
        if self._snapshot.value is None or not self._snapshot.loaded:
            return  # the first load reads it from the store
        grant = add or remove
        assert grant is not None
        slot = (grant.tenant, grant.grantee)

        def patch(current: Snapshot) -> Snapshot:
            # Idempotent: also applied on top of a load that overlapped the write.
            kept = tuple(g for g in current.get(slot, ()) if g.id != grant.id)
            updated = (*kept, add) if add is not None else kept
            # Copy-on-write: a reader's snapshot is never mutated under it.
            return {**current, slot: updated}

        self._snapshot.update(patch)

    # -- reading -------------------------------------------------------------------------------
    async def _read_tenant(self, tenant: str) -> list[Grant]:
        fields = await self._store.hgetall(_key(tenant))
        return [g for raw in fields.values() if (g := _parse(tenant, raw)) is not None]

    async def list(self, tenant: str | None = None) -> list[Grant]:
        """Unexpired grants of ``tenant`` (or of every tenant), straight from the store."""
        if tenant is not None:
            validate_tenant(tenant)
        tenants = [tenant] if tenant is not None else sorted(await self._store.smembers(GRANT_INDEX))
        now = self._clock()
        grants = [g for t in tenants for g in await self._read_tenant(t) if g.expires_at > now]
        return sorted(grants, key=lambda g: (g.tenant, g.created_at))

    async def load(self) -> Snapshot:
        """Every unexpired grant (the ``SyncedSnapshot`` loader); prunes expired records and
        index entries of tenants without grants."""
        since = self._generation.begin() if self._generation is not None else 0
        tenants = sorted(await self._store.smembers(GRANT_INDEX))
        now = self._clock()
        snapshot: dict[tuple[str, str], tuple[Grant, ...]] = {}
        emptied: list[str] = []
        for start in range(0, len(tenants), _LOAD_BATCH):
            batch = tenants[start : start + _LOAD_BATCH]
            hashes = await asyncio.gather(*(self._store.hgetall(_key(t)) for t in batch))
            for tenant, fields in zip(batch, hashes, strict=True):
                expired = self._collect(tenant, fields, now, snapshot)
                if expired:
                    await self._store.hdel(_key(tenant), *expired)
                if not fields or len(expired) == len(fields):
                    emptied.append(tenant)
        if self._generation is not None:
            # SECURITY (App. C): never replace the grants in memory with a reset store's view
            # (nor prune its index): StoreReset keeps the snapshot until the write-back is done.
            await self._generation.verify(since)
        for tenant in emptied:
            await self._store.srem(GRANT_INDEX, tenant)
            fields = await self._store.hgetall(_key(tenant))
            if fields:  # a grant raced the pruning: keep the tenant indexed
                await self._store.sadd(GRANT_INDEX, tenant)
                self._collect(tenant, fields, now, snapshot)
        self._note_ended(snapshot, now)
        return snapshot

    def _note_ended(self, new: Snapshot, now: float) -> None:
        current = self._snapshot.value
        self._ended = {i: e for i, e in self._ended.items() if e[1] > now}
        if current is None:
            return
        live = {g.id for grants in new.values() for g in grants}
        for grants in current.values():
            for grant in grants:
                if grant.id not in live and grant.expires_at > now:
                    self._ended[grant.id] = (grant.tenant, grant.expires_at)

    async def restore(self) -> tuple[int, int]:
        """Write the grants held in memory back to a store that was reset (App. C): each one
        unless the store has it, with the grants that ended here tombstoned so another
        instance's older copy cannot revive them. Returns (held, written); ``StoreUnavailable``."""
        snapshot = self._snapshot.value
        if snapshot is None or not self._snapshot.loaded:
            return 0, 0
        now = self._clock()
        by_tenant: dict[str, dict[str, bytes]] = {}
        for (tenant, _grantee), grants in snapshot.items():
            for grant in grants:
                if grant.expires_at > now and grant.id not in self._ended:
                    by_tenant.setdefault(tenant, {})[grant.id] = _encode(grant)
        ended: dict[str, list[str]] = {}
        for grant_id, (tenant, expires_at) in self._ended.items():
            if expires_at > now:
                ended.setdefault(tenant, []).append(grant_id)
        held = written = 0
        for tenant in sorted(by_tenant.keys() | ended.keys()):
            entries = by_tenant.get(tenant, {})
            held += len(entries)
            written += await self._store.hash_merge(
                _key(tenant), entries, ended.get(tenant, ()), tombstone_ttl=MAX_TTL
            )
        if by_tenant:
            await self._store.sadd(GRANT_INDEX, *by_tenant)
        if by_tenant or ended:
            await self._store.publish(GRANT_CHANNEL, b"")
        return held, written

    @staticmethod
    def _collect(
        tenant: str, fields: Mapping[str, bytes], now: float, into: dict[tuple[str, str], tuple[Grant, ...]]
    ) -> builtins.list[str]:  # builtins: the method ``list`` above shadows the type here
        """Add the tenant's live grants to ``into``; return the ids of expired ones (records this
        module cannot parse are skipped, never deleted: they may be a bug worth inspecting)."""
        dead: list[str] = []
        for grant_id, raw in fields.items():
            grant = _parse(tenant, raw)
            if grant is None:
                continue
            if grant.expires_at <= now:
                dead.append(grant_id)
                continue
            slot = (tenant, grant.grantee)
            into[slot] = (*into.get(slot, ()), grant)
        return dead


def grants_of(grants: Iterable[Grant]) -> list[dict[str, Any]]:
    return [g.public() for g in grants]


__all__ = [
    "ALL_MODULES",
    "GRANT_CHANNEL",
    "GRANT_INDEX",
    "GRANT_PREFIX_TEMPLATE",
    "MAX_TTL",
    "SENSITIVE_MODULES",
    "SUPPORT_ROLE",
    "Grant",
    "GrantsUnavailable",
    "SupportGrants",
    "grants_of",
    "validate_grant_request",
]
