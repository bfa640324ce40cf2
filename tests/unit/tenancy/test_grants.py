"""Support grants on both store backends: module coverage, expiry, revocation on another
instance, tenant purge, fail-closed before the first load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.audit import AuditTrail
from gateway.audit.purge import registered_tenant_data
from gateway.errors import Conflict
from gateway.state import StateStore
from gateway.tenancy.grants import (
    GRANT_INDEX,
    Grant,
    GrantsUnavailable,
    SupportGrants,
    validate_grant_request,
)
from tests.support.timing import Clock, eventually


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def grants(store: StateStore, clock: Clock) -> AsyncIterator[SupportGrants]:
    service = SupportGrants(store, clock=clock, resync=60)
    await service.start()
    await service.wait_loaded(timeout=3)
    yield service
    await service.stop()


def test_prefix_registered_for_tenant_purge() -> None:
    assert "grants:{tenant}:" in registered_tenant_data()
    assert not GRANT_INDEX.startswith("grants:")


async def test_modules_and_sensitive_modules(grants: SupportGrants) -> None:
    star = await grants.create("acme", "sam", ["*"], 3600, "alice")
    assert grants.find("acme", "sam", "inventory") == star
    assert grants.find("acme", "sam", "logistics") == star
    assert grants.find("acme", "sam", "finance") is None  # "*" never opens finance ...
    assert grants.find("acme", "sam", "customers") is None  # ... nor customers
    assert grants.find("acme", "sam", None) is None  # routes without a module: never
    named = await grants.create("acme", "sam", ["finance"], 3600, "alice")
    assert grants.find("acme", "sam", "finance") == named
    assert grants.find("acme", "sam", "customers") is None
    assert grants.find("acme", "other-support", "inventory") is None  # wrong grantee
    assert grants.find("globex", "sam", "inventory") is None  # wrong tenant


async def test_expiry_is_exact(grants: SupportGrants, clock: Clock) -> None:
    grant = await grants.create("acme", "sam", ["inventory"], 60, "alice")
    clock.now += 59.9
    assert grants.find("acme", "sam", "inventory") == grant
    clock.now += 0.2
    assert grants.find("acme", "sam", "inventory") is None
    assert await grants.list("acme") == []
    await grants.reload()  # the loader prunes the expired record and the empty index entry
    assert grants.find("acme", "sam", "inventory") is None


async def test_revocation_reaches_another_instance_within_a_second(
    grants: SupportGrants, store: StateStore
) -> None:
    other = SupportGrants(store, resync=60)
    await other.start()
    try:
        await other.wait_loaded(timeout=3)
        grant = await grants.create("acme", "sam", ["inventory"], 3600, "alice")
        await eventually(lambda: other.find("acme", "sam", "inventory") is not None, timeout=1.0)
        assert await grants.revoke(grant.id, "globex") is None  # another tenant's id: not found
        started = time.monotonic()
        assert (await other.revoke(grant.id)) == grant
        assert other.find("acme", "sam", "inventory") is None  # the revoking instance: at once
        await eventually(lambda: grants.find("acme", "sam", "inventory") is None, timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert await grants.revoke(grant.id) is None  # already gone
        assert await grants.revoke("../../etc") is None
    finally:
        await other.stop()


async def test_list_and_restart(grants: SupportGrants, store: StateStore) -> None:
    a = await grants.create("acme", "sam", ["inventory"], 3600, "alice")
    b = await grants.create("globex", "sam", ["*"], 3600, "carol")
    assert [g.id for g in await grants.list()] == [a.id, b.id]
    assert [g.id for g in await grants.list("globex")] == [b.id]
    fresh = SupportGrants(store)
    with pytest.raises(GrantsUnavailable):  # fail closed before the first load
        fresh.find("acme", "sam", "inventory")
    assert await fresh.reload()
    assert fresh.find("acme", "sam", "inventory") == a
    assert a.public()["modules"] == ["inventory"] and a.public()["expires_at"].endswith("Z")


async def test_tenant_purge_removes_grants_on_every_instance_at_once(
    grants: SupportGrants, store: StateStore, tmp_path: Path
) -> None:
    acme = await grants.create("acme", "sam", ["inventory"], 3600, "alice")
    globex = await grants.create("globex", "sam", ["inventory"], 3600, "carol")
    assert grants.live_ids() == {acme.id, globex.id}
    await asyncio.sleep(0.3)  # the reloads the creates' own messages cause are over before the purge
    trail = AuditTrail(store, spool_dir=tmp_path / "spool")
    try:
        await trail.purge_tenant("acme", actor="test")
    finally:
        trail.close()
    # No reload by hand and a 60 s resync: the purge's own message makes the snapshot drop it.
    await eventually(lambda: grants.find("acme", "sam", "inventory") is None, timeout=1.0)
    assert grants.find("globex", "sam", "inventory") == globex
    assert grants.live_ids() == {globex.id}


async def test_cap_and_validation(grants: SupportGrants, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.tenancy.grants.MAX_GRANTS_PER_TENANT", 2)
    await grants.create("acme", "sam", ["inventory"], 60, "alice")
    await grants.create("acme", "sam", ["logistics"], 60, "alice")
    with pytest.raises(Conflict):
        await grants.create("acme", "sam", ["reports"], 60, "alice")
    with pytest.raises(ValueError):
        await grants.create("acme", "sam", ["inventory"], 24 * 3600 + 1, "alice")


@pytest.mark.parametrize(
    ("grantee", "modules", "ttl"),
    [
        ("", ["inventory"], 60),
        ("sam\n", ["inventory"], 60),
        (5, ["inventory"], 60),
        ("sam", [], 60),
        ("sam", "inventory", 60),
        ("sam", ["in ventory"], 60),
        ("sam", ["inventory"], 0),
        ("sam", ["inventory"], 86401),
    ],
)
def test_invalid_grant_requests(grantee: object, modules: object, ttl: float) -> None:
    with pytest.raises(ValueError):
        validate_grant_request(grantee, modules, ttl)


async def test_malformed_record_is_ignored_not_fatal(grants: SupportGrants, store: StateStore) -> None:
    good = await grants.create("acme", "sam", ["inventory"], 3600, "alice")
    await store.hset("grants:acme:", "g_bogusbogusbogusbogus", b"{not json")
    # A record copied from another tenant's hash does not count there.
    await store.hset("grants:globex:", good.id, (await store.hget("grants:acme:", good.id)) or b"")
    await store.sadd(GRANT_INDEX, "globex")
    assert await grants.reload()
    assert grants.find("acme", "sam", "inventory") == good
    assert grants.find("globex", "sam", "inventory") is None


@pytest.mark.parametrize("module", ["Finance", "FINANCE", "Customers", "cUsToMeRs", " finance"])
def test_star_never_opens_sensitive_modules_in_any_letter_case(module: str) -> None:
    # Regression: route modules are free text in the config; "*" opened a route named "Finance".
    star = Grant("g_" + "x" * 22, "acme", "sam", ("*",), 0.0, 1e12, "alice")
    assert not star.covers(module)
    assert star.covers("inventory")
    assert Grant("g_" + "y" * 22, "acme", "sam", (module,), 0.0, 1e12, "alice").covers(module)


async def test_ill_typed_record_does_not_stall_reloads(grants: SupportGrants, store: StateStore) -> None:
    # Regression: a record whose expires_at was a string raised TypeError inside load(), so every
    # later reload failed and revocations stopped propagating to this instance.
    good = await grants.create("acme", "sam", ["inventory"], 3600, "alice")
    await store.hset(
        "grants:acme:",
        "g_illtypedilltypedill",
        b'{"id":"g_illtypedilltypedill","tenant":"acme","grantee":"sam","modules":["*"],'
        b'"created_at":"0","expires_at":"9","created_by":"x"}',
    )
    assert await grants.reload()
    assert grants.find("acme", "sam", "inventory") == good
    await store.hdel("grants:acme:", good.id)  # revoked elsewhere: the next reload must see it
    assert await grants.reload()
    assert grants.find("acme", "sam", "inventory") is None
