"""KillSwitchRegistry on both backends: versioned sets, apply + acknowledge, release, TTL
clean-up, durability across a restart, propagation to a second instance, fail-closed before the
first load, and the last set kept while Redis is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.errors import StoreUnavailable
from gateway.killswitch.model import Switch, validate_spec
from gateway.killswitch.registry import INSTANCES_KEY, SWITCHES_KEY, VERSION_KEY, KillSwitchRegistry
from gateway.state import StateStore, open_store
from tests.support.redis_server import RedisServer
from tests.support.timing import eventually


def spec(scope: str = "module", target: str | None = "finance", **extra: Any) -> Switch:
    return validate_spec({"scope": scope, "target": target, "mode": "block", "reason": "test", **extra})


@pytest.fixture
async def registry(store: StateStore) -> AsyncIterator[KillSwitchRegistry]:
    reg = KillSwitchRegistry(store, instance_id="one", resync=30)
    await reg.start()
    await reg.wait_loaded(3)
    yield reg
    await reg.stop()


async def test_engage_applies_here_and_is_acknowledged(registry: KillSwitchRegistry) -> None:
    assert registry.index is not None and registry.index.empty
    switch = await registry.engage(spec(incident="INC-1"), ttl=None, actor="admin-token:tests")
    assert switch.id.startswith("ks_") and switch.version >= 1 and switch.actor == "admin-token:tests"
    assert registry.version == switch.version
    assert [s.id for s in registry.index.switches] == [switch.id]
    acked, lagging = await registry.wait_acknowledged(switch.version, timeout=1)
    assert acked == ["one"] and lagging == []
    assert [s.id for s in await registry.stored_switches()] == [switch.id]


async def test_release_removes_and_bumps_the_version(registry: KillSwitchRegistry) -> None:
    switch = await registry.engage(spec(), ttl=None, actor=None)
    released = await registry.release(switch.id)
    assert released is not None and released[0].id == switch.id and released[1] > switch.version
    assert registry.index is not None and registry.index.empty
    assert await registry.release(switch.id) is None  # twice: unknown now


async def test_switches_survive_a_restart(store_url: str) -> None:
    async with open_store(store_url) as store:
        first = KillSwitchRegistry(store, instance_id="before", resync=30)
        await first.start()
        await first.wait_loaded(3)
        switch = await first.engage(spec(), ttl=None, actor=None)
        await first.stop()
    async with open_store(store_url) as store:
        second = KillSwitchRegistry(store, instance_id="after", resync=30)
        assert second.index is None  # fail closed until loaded
        await second.start()
        await second.wait_loaded(3)
        assert second.index is not None and [s.id for s in second.index.switches] == [switch.id]
        assert second.version == switch.version
        await second.stop()


async def test_a_second_instance_applies_within_a_second(
    store: StateStore, registry: KillSwitchRegistry
) -> None:
    other = KillSwitchRegistry(store, instance_id="two", resync=30)
    await other.start()
    await other.wait_loaded(3)
    try:
        await eventually(lambda: other.index is not None)
        started = time.monotonic()
        switch = await registry.engage(spec(), ttl=None, actor=None)
        await eventually(lambda: other.version == switch.version, timeout=1.0)
        acked, lagging = await registry.wait_acknowledged(switch.version, timeout=2)
        print(f"propagation to a second registry: {(time.monotonic() - started) * 1000:.1f} ms")
        assert set(acked) == {"one", "two"} and lagging == []
    finally:
        await other.stop()


async def test_a_live_instance_that_does_not_apply_is_named_lagging(
    store: StateStore, registry: KillSwitchRegistry
) -> None:
    # A heartbeat of a live instance stuck on an old version (like a SIGSTOPped process).
    await store.hset(INSTANCES_KEY, "stuck", orjson.dumps({"version": 0, "at": time.time()}))
    await store.hset(INSTANCES_KEY, "dead", orjson.dumps({"version": 0, "at": time.time() - 10}))
    switch = await registry.engage(spec(), ttl=None, actor=None)
    started = time.monotonic()
    acked, lagging = await registry.wait_acknowledged(switch.version, timeout=0.5)
    assert time.monotonic() - started >= 0.5
    assert acked == ["one"] and lagging == ["stuck"]  # "dead" is no longer live: not waited for
    live = {i["instance"] for i in await registry.instances()}
    assert live == {"one", "stuck"}


async def test_expired_switches_are_cleaned_from_the_store(store: StateStore) -> None:
    now = [1_800_000_000.0]
    reg = KillSwitchRegistry(store, instance_id="clock", resync=30, clock=lambda: now[0])
    await reg.start()
    await reg.wait_loaded(3)
    try:
        await reg.engage(spec(), ttl=60, actor=None)
        assert await store.hgetall(SWITCHES_KEY)
        now[0] += 61
        await reg.reload()
        assert reg.index is not None and reg.index.empty
        assert await store.hgetall(SWITCHES_KEY) == {}
    finally:
        await reg.stop()


async def test_malformed_records_are_skipped(store: StateStore, registry: KillSwitchRegistry) -> None:
    good = await registry.engage(spec(), ttl=None, actor=None)
    await store.hset(SWITCHES_KEY, "ks_bad", b'{"id": "ks_bad", "scope": "planet"}')
    await registry.reload()
    assert registry.index is not None and [s.id for s in registry.index.switches] == [good.id]


async def test_last_set_is_enforced_while_redis_is_down(redis_server: RedisServer) -> None:
    async with open_store(redis_server.url) as store:
        reg = KillSwitchRegistry(store, instance_id="solo", resync=0.2, retry=0.1)
        await reg.start()
        await reg.wait_loaded(3)
        switch = await reg.engage(spec(), ttl=None, actor=None)
        redis_server.stop()
        await eventually(lambda: not reg.healthy, timeout=5)
        await reg.reload()
        assert reg.index is not None and [s.id for s in reg.index.switches] == [switch.id]
        with pytest.raises(StoreUnavailable):
            await reg.engage(spec(), ttl=None, actor=None)
        await reg.stop()


async def test_a_store_reset_does_not_freeze_enforcement_at_the_old_version(store: StateStore) -> None:
    """SECURITY (review finding): after a flush or a failover to a stale replica the version
    counter restarts; a switch engaged then must still be enforced everywhere and acknowledged
    honestly, not ignored as "older" than the set an instance already holds."""
    one = KillSwitchRegistry(store, instance_id="one", resync=30)
    two = KillSwitchRegistry(store, instance_id="two", resync=30)
    for reg in (one, two):
        await reg.start()
        await reg.wait_loaded(3)
    try:
        for _ in range(3):
            last = await one.engage(spec(), ttl=None, actor="t")
        await eventually(lambda: two.version == last.version)
        await store.delete(SWITCHES_KEY, VERSION_KEY, INSTANCES_KEY)  # what FLUSHALL leaves
        fresh = await one.engage(spec(scope="tenant", target="acme"), ttl=None, actor="t")
        assert fresh.version < last.version
        for reg in (one, two):
            await eventually(lambda reg=reg: [s.id for s in reg.index.switches] == [fresh.id])
        acked, lagging = await one.wait_acknowledged(fresh.version, timeout=2)
        assert acked == ["one", "two"] and lagging == []
        # A heartbeat from before the reset (above the store's counter) is not an acknowledgement.
        ghost = {"version": last.version, "at": time.time(), "stale": False}
        await store.hset(INSTANCES_KEY, "ghost", orjson.dumps(ghost))
        acked, lagging = await one.wait_acknowledged(fresh.version, timeout=0.3)
        assert lagging == ["ghost"] and "ghost" not in acked
    finally:
        for reg in (one, two):
            await reg.stop()


async def test_an_expired_switch_is_audited_once_whoever_tidies_it(store: StateStore, tmp_path) -> None:
    from gateway.audit import AuditTrail

    audit = AuditTrail(store, spool_dir=tmp_path / "spool")
    now = [1_800_000_000.0]
    regs = [
        KillSwitchRegistry(store, instance_id=name, resync=30, clock=lambda: now[0], audit=audit)
        for name in ("a", "b")
    ]
    for reg in regs:
        await reg.start()
        await reg.wait_loaded(3)
    try:
        await regs[0].engage(spec(scope="tenant", target="acme", incident="INC-9"), ttl=60, actor="t")
        now[0] += 61
        await asyncio.gather(*(reg.reload() for reg in regs))  # both notice; one deletes

        async def exported(trail: str) -> str:
            chunks = [c async for c in audit.export(trail, fmt="json")]
            return b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks).decode()

        # The deleting load may be a background refresh still writing its record: wait for it.
        async with asyncio.timeout(3):
            while not all(['"killswitch.expired"' in await exported(t) for t in ("acme", "_system")]):
                await asyncio.sleep(0.01)
        await asyncio.gather(*(reg.reload() for reg in regs))  # later loads must not repeat it
        for trail in ("acme", "_system"):
            text = await exported(trail)
            assert text.count('"killswitch.expired"') == 1, trail
            assert '"INC-9"' in text
    finally:
        for reg in regs:
            await reg.stop()
        audit.close()


async def test_instance_states_are_enforcing_lagging_or_silent(
    store: StateStore, registry: KillSwitchRegistry
) -> None:
    switch = await registry.engage(spec(), ttl=None, actor=None)
    now = time.time()
    await store.hset(INSTANCES_KEY, "behind", orjson.dumps({"version": 0, "at": now, "stale": True}))
    await store.hset(INSTANCES_KEY, "gone", orjson.dumps({"version": switch.version, "at": now - 3.5}))
    version, rows = await registry.instance_states()
    assert version == switch.version
    by_id = {r["instance"]: r for r in rows}
    assert by_id["one"]["state"] == "enforcing" and by_id["one"]["store"] == "ok"
    assert by_id["one"]["version"] == switch.version and by_id["one"]["heartbeat_age_s"] < 1.5
    assert by_id["behind"]["state"] == "lagging" and by_id["behind"]["store"] == "stale"
    # Three missed heartbeats: silent, even though it had applied the newest set.
    assert by_id["gone"]["state"] == "silent" and by_id["gone"]["heartbeat_age_s"] >= 3.5
