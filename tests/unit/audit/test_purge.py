"""Purge removes a tenant's registered data and trail, leaving one verifiable tenant.purged."""

from __future__ import annotations

import pytest

from gateway.audit import PURGED_EVENT, AuditTrail, register_tenant_data, registered_tenant_data
from gateway.state import StateStore
from tests.unit.audit.conftest import FakeClock, export_bytes, stored_records

PREFIXES = ("mfa:{tenant}:", "recovery:{tenant}:", "grants:{tenant}:")


async def seed(store: StateStore, tenant: str) -> None:
    await store.set(f"mfa:{tenant}:alice", b"totp-secret")
    await store.hset(f"recovery:{tenant}:alice", "code1", b"hash")
    await store.sadd(f"grants:{tenant}:active", "g1", "g2")
    await store.set(f"grants:{tenant}:g1", b"{}", ttl=3600)


@pytest.fixture
def registered(tenant_registry: list[str]) -> list[str]:
    for template in PREFIXES:
        register_tenant_data(template)
    register_tenant_data(PREFIXES[0])  # twice is harmless
    assert registered_tenant_data() == PREFIXES
    return tenant_registry


async def test_purge_leaves_nothing_but_the_purge_record(
    trail: AuditTrail, store: StateStore, clock: FakeClock, registered: list[str]
) -> None:
    for tenant in ("acme", "acme2", "globex"):
        await seed(store, tenant)
    for i in range(10):
        await trail.record("auth.login", tenants=["acme"], actor=f"u{i}")
        await trail.record("auth.login", tenants=["acme2"], actor=f"v{i}")
    await trail.record("tenant.mismatch", tenants=["acme", "globex"], actor="x")
    before = await stored_records(store, "acme")

    summary = await trail.purge_tenant("acme", actor="gateway-admin:ops", request_id="req-p")

    assert summary == {
        "removed_records": 11,
        "data_prefixes": ["mfa:acme:", "recovery:acme:", "grants:acme:"],
        "deleted_keys": 4,
    }
    for template in PREFIXES:
        assert await store.keys(template.format(tenant="acme")) == []
        assert await store.keys(template.format(tenant="acme2")) != []  # a prefix-sharing tenant is untouched
        assert await store.keys(template.format(tenant="globex")) != []
    (purged,) = await stored_records(store, "acme")
    assert purged["event"] == PURGED_EVENT and purged["seq"] == 12
    assert purged["actor"] == "gateway-admin:ops" and purged["request_id"] == "req-p"
    assert purged["prev_hash"] == before[-1]["hash"]
    assert purged["details"]["removed_through_seq"] == 11
    assert purged["details"]["removed_last_hash"] == before[-1]["hash"]
    result = await trail.verify("acme")
    assert result.ok and result.records == 1, result.problem
    assert b"u3" not in await export_bytes(trail, "acme")
    # Audited globally; other tenants' trails are untouched and intact.
    (system,) = await stored_records(store, "_system")
    assert system["event"] == PURGED_EVENT and system["details"]["tenant"] == "acme"
    assert system["details"]["removed_records"] == 11
    assert len(await stored_records(store, "acme2")) == 10 and (await trail.verify("acme2")).ok
    assert len(await stored_records(store, "globex")) == 1 and (await trail.verify("globex")).ok


async def test_purge_is_idempotent(
    trail: AuditTrail, store: StateStore, clock: FakeClock, registered: list[str]
) -> None:
    await seed(store, "acme")
    for i in range(3):
        await trail.record("e", tenants=["acme"], actor=f"u{i}")
    await trail.purge_tenant("acme", actor="admin")
    again = await trail.purge_tenant("acme", actor="admin")
    assert again == {"removed_records": 1, "data_prefixes": again["data_prefixes"], "deleted_keys": 0}
    (purged,) = await stored_records(store, "acme")
    assert purged["event"] == PURGED_EVENT and purged["seq"] == 5
    assert (await trail.verify("acme")).ok
    assert [r["event"] for r in await stored_records(store, "_system")] == [PURGED_EVENT, PURGED_EVENT]
    assert (await trail.verify("_system")).ok
    # Writing after a purge continues the chain.
    await trail.record("tenant.recreated", tenants=["acme"], actor="admin")
    assert (await trail.verify("acme")).records == 2


async def test_purge_of_an_unknown_tenant(
    trail: AuditTrail, store: StateStore, registered: list[str]
) -> None:
    summary = await trail.purge_tenant("ghost", actor="admin")
    assert summary["removed_records"] == 0 and summary["deleted_keys"] == 0
    (purged,) = await stored_records(store, "ghost")
    assert purged["seq"] == 1 and purged["prev_hash"] == "0" * 64
    assert (await trail.verify("ghost")).ok


async def test_system_trail_cannot_be_purged(trail: AuditTrail) -> None:
    with pytest.raises(ValueError, match="_system"):
        await trail.purge_tenant("_system", actor="admin")


@pytest.mark.parametrize(
    "template", ["mfa:{tenant}", "mfa:{tenant}-x:", "mfa:", "{tenant}:{other}:", "a:{tenant}:{tenant}:"]
)
def test_ambiguous_prefix_templates_are_refused(template: str, tenant_registry: list[str]) -> None:
    with pytest.raises(ValueError, match="tenant"):
        register_tenant_data(template)
    assert tenant_registry == []
