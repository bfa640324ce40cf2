"""Store reset (SPEC App. C) against a real redis-server: the marker, snapshots that keep what
they enforce, and the write-back - including two instances writing back at once, with views
that differ, losing nothing and reviving nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from gateway.audit import SYSTEM_TRAIL, AuditTrail
from gateway.auth.revocation import RevocationEpochs
from gateway.errors import StoreUnavailable
from gateway.killswitch.model import Switch, validate_spec
from gateway.killswitch.registry import SWITCHES_KEY, VERSION_KEY, KillSwitchRegistry
from gateway.ratelimit.limiter import RateLimitBackend
from gateway.ratelimit.lockout import LockoutService
from gateway.ratelimit.lockout_memory import LockoutMemory
from gateway.ratelimit.model import LoginProtectionConfig
from gateway.state import StateStore, open_store
from gateway.state.generation import MARKER_KEY, StoreGeneration, StoreReset
from gateway.state.restore import StoreRestorer
from gateway.tenancy.grants import SupportGrants
from tests.support.redis_server import RedisServer

NOW = time.time()


def spec(target: str) -> Switch:
    return validate_spec({"scope": "module", "target": target, "mode": "block", "reason": "test"})


class Instance:
    """One gateway's security services on its own connection pool to the shared Redis."""

    def __init__(self, url: str, name: str, spool: Path) -> None:
        self.name = name
        self.store: StateStore = open_store(url)
        self.generation = StoreGeneration(self.store)
        gen = self.generation
        self.switches = KillSwitchRegistry(self.store, instance_id=name, resync=60, generation=gen)
        self.revocations = RevocationEpochs(self.store, resync=60, generation=gen)
        self.grants = SupportGrants(self.store, resync=60, generation=gen)
        self.lockouts = LockoutMemory(self.store)
        self.audit = AuditTrail(self.store, spool_dir=spool / name)
        self.resets = 0
        self.states: list[bool] = []
        self.restorer = StoreRestorer(
            gen,
            {
                "killswitches": self.switches,
                "revocations": self.revocations,
                "grants": self.grants,
                "lockouts": self.lockouts,
            },
            self.audit.system_event("store.restored"),
            instance_id=name,
            on_reset=self._count,
            on_state=self.states.append,
        )

    def _count(self) -> None:
        self.resets += 1

    async def start(self) -> None:
        await self.store.open()
        for service in (self.switches, self.revocations, self.grants):
            await service.start()
            await service.wait_loaded(3)

    async def stop_refreshing(self) -> None:
        """Freeze this instance's view (a laggard): memory stays, no reloads."""
        for service in (self.switches, self.revocations, self.grants):
            await service.stop()

    async def close(self) -> None:
        await self.stop_refreshing()
        self.audit.close()
        await self.store.close()


@pytest.fixture
async def instances(redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    made: list[Instance] = []

    async def make(name: str) -> Instance:
        instance = Instance(redis_url, name, tmp_path)
        await instance.start()
        made.append(instance)
        return instance

    yield make
    for instance in made:
        await instance.close()


async def answers(store: StateStore) -> None:
    """After a restart, pooled connections fail once each before the pool reconnects."""
    deadline = time.monotonic() + 5
    while True:
        try:
            await store.ping()
            return
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def enforced(instance: Instance, *, switches: set[str], revoked: dict[str, str], grants: set[str]) -> None:
    """What a request would meet on ``instance`` (memory only, like the hot path)."""
    index = instance.switches.index
    assert index is not None
    assert {s.target for s in index.switches} >= switches
    for tenant, user in revoked.items():
        assert instance.revocations.is_revoked(tenant, user, NOW - 60), (tenant, user)
        assert not instance.revocations.is_revoked(tenant, user, time.time() + 60)  # not all
    live = instance.grants.live_ids()
    assert grants <= live, (grants, live)


async def test_flush_keeps_memory_and_the_write_back_restores_it(
    instances: Any, shared_redis_server: RedisServer
) -> None:
    a: Instance = await instances("a")
    switch = await a.switches.engage(spec("finance"), ttl=300, actor="t")
    await a.revocations.revoke("acme", "alice")
    await a.revocations.revoke("globex")
    grant = await a.grants.create("acme", "sam", ["orders"], 600, created_by="t")
    lock_key, until = "rl:lock:ip:198.51.100.7", time.time() + 120
    a.lockouts.remember(lock_key, until, orjson.dumps({"kind": "ip", "until": until}))
    await a.store.set(lock_key, b"x", ttl=120)
    version = a.switches.version
    assert version is not None

    shared_redis_server.flushall()
    # Every loader refuses the forgetful store; memory is what is enforced.
    assert await a.switches.reload() is False
    assert await a.revocations.reload() is False
    assert await a.grants.reload() is False
    enforced(a, switches={"finance"}, revoked={"acme": "alice", "globex": "anyone"}, grants={grant.id})
    assert a.restorer.restoring and a.resets == 1 and a.states == [True]
    assert await a.store.get(MARKER_KEY) is None  # noticed, not yet written back

    await a.restorer.probe()
    assert not a.restorer.restoring and a.states == [True, False] and a.resets == 1
    assert a.switches.healthy and a.revocations.healthy and a.grants.healthy
    assert await a.store.get(MARKER_KEY) == a.generation.known is not None
    assert set(await a.store.hgetall(SWITCHES_KEY)) == {switch.id}
    assert int(await a.store.get(VERSION_KEY) or 0) == version
    lock_ttl = await a.store.get(lock_key)
    assert lock_ttl is not None and orjson.loads(lock_ttl)["until"] == until

    # A fresh instance started after the write-back enforces all of it too.
    c: Instance = await instances("c")
    enforced(c, switches={"finance"}, revoked={"acme": "alice", "globex": "anyone"}, grants={grant.id})
    assert c.generation.known == a.generation.known

    # Audited in _system with counts; once.
    records = [r async for r in a.audit._records(SYSTEM_TRAIL) if r["event"] == "store.restored"]
    assert len(records) == 1
    details = records[0]["details"]
    assert details["instance"] == "a" and details["reason"] == "marker missing"
    assert details["held"] == {"killswitches": 1, "revocations": 2, "grants": 1, "lockouts": 1}
    assert details["written"] == details["held"]


async def test_an_intact_store_is_not_a_reset(instances: Any) -> None:
    a: Instance = await instances("a")
    await a.revocations.revoke("acme", "alice")
    for _ in range(3):
        await a.restorer.probe()
        assert await a.revocations.reload() is True
    assert a.resets == 0 and not a.restorer.restoring


@pytest.mark.parametrize("order", ["together", "laggard-first", "laggard-last"])
async def test_two_writers_with_different_views_lose_nothing_and_revive_nothing(
    instances: Any, shared_redis_server: RedisServer, order: str
) -> None:
    a: Instance = await instances("a")
    b: Instance = await instances("b")
    common = await a.switches.engage(spec("orders"), ttl=None, actor="t")
    released = await a.switches.engage(spec("legacy"), ttl=None, actor="t")
    revoked_grant = await a.grants.create("acme", "sam", ["orders"], 600, created_by="t")
    kept_grant = await a.grants.create("acme", "sue", ["orders"], 600, created_by="t")
    for service in (b.switches, b.grants):
        await service.reload()
    assert {s.id for s in b.switches.index.switches} == {common.id, released.id}  # type: ignore[union-attr]
    await b.stop_refreshing()  # b lags from here on
    await a.stop_refreshing()

    # a moves on (b never sees it); b revokes a user a never hears of.
    newer = await a.switches.engage(spec("finance"), ttl=300, actor="t")
    await a.switches.release(released.id)
    await a.grants.revoke(revoked_grant.id)
    await a.revocations.revoke("acme", "alice")
    await b.revocations.revoke("acme", "bob")
    assert revoked_grant.id in b.grants.live_ids()  # b's stale copy
    key = "rl:lock:user:h1"
    long_until, short_until = time.time() + 90, time.time() + 30
    a.lockouts.remember(key, long_until, orjson.dumps({"until": long_until}))
    b.lockouts.remember(key, short_until, orjson.dumps({"until": short_until}))

    shared_redis_server.flushall()
    if order == "together":
        await asyncio.gather(a.restorer.probe(), b.restorer.probe())
    elif order == "laggard-first":
        await b.restorer.probe()
        await a.restorer.probe()
    else:
        await a.restorer.probe()
        await b.restorer.probe()
    assert not a.restorer.restoring and not b.restorer.restoring
    assert a.generation.known == b.generation.known == await a.store.get(MARKER_KEY)

    stored = set(await a.store.hgetall(SWITCHES_KEY))
    assert stored == {common.id, newer.id}  # union, minus the release a knew of
    assert int(await a.store.get(VERSION_KEY) or 0) == a.switches.version  # the newest version
    c: Instance = await instances("c")
    enforced(c, switches={"orders", "finance"}, revoked={"acme": "alice"}, grants={kept_grant.id})
    enforced(c, switches=set(), revoked={"acme": "bob"}, grants=set())
    assert revoked_grant.id not in c.grants.live_ids()  # SECURITY: never revived by b's copy
    assert "legacy" not in {s.target for s in c.switches.index.switches}  # type: ignore[union-attr]
    raw = await a.store.get(key)
    assert raw is not None and orjson.loads(raw)["until"] == long_until  # the later expiry won


async def test_kill_switch_version_going_back_is_a_reset(instances: Any) -> None:
    """A replica that lagged kept the marker but not the newest switches: the version tells."""
    a: Instance = await instances("a")
    b: Instance = await instances("b")
    first = await a.switches.engage(spec("orders"), ttl=None, actor="t")
    second = await a.switches.engage(spec("finance"), ttl=None, actor="t")
    await b.switches.reload()
    old_marker = a.generation.known
    # The replica's view: the first switch only, an older version, the same marker.
    await a.store.hdel(SWITCHES_KEY, second.id)
    await a.store.set(VERSION_KEY, str(first.version).encode())
    assert await a.switches.reload() is False
    assert a.generation.pending == "killswitch version went back"
    assert {s.id for s in a.switches.index.switches} == {first.id, second.id}  # type: ignore[union-attr]
    await a.restorer.probe()
    assert await a.store.get(MARKER_KEY) != old_marker  # renewed: the others notice too
    await b.restorer.probe()
    assert b.resets == 1 and b.generation.known == a.generation.known
    assert set(await a.store.hgetall(SWITCHES_KEY)) == {first.id, second.id}


async def test_lockout_holds_through_a_flush_but_an_operator_clear_is_honoured(
    redis_url: str, shared_redis_server: RedisServer, tmp_path: Path
) -> None:
    config = LoginProtectionConfig(
        failures_per_ip=50, failures_per_username=2, window=60, base_lockout=30, max_lockout=60
    )
    async with open_store(redis_url) as store:
        backend = RateLimitBackend(redis_url)
        audit = AuditTrail(store, spool_dir=tmp_path / "spool")
        generation = StoreGeneration(store)
        await generation.check()
        here = LockoutService(store, audit, backend, config, mode="local", timeout=1, generation=generation)
        other = LockoutService(store, audit, backend, config, mode="local", timeout=1)
        try:
            attacker = here.subjects("198.51.100.7", "victim")
            for request_id in ("r1", "r2"):
                await here.record_failure(attacker, request_id)
            assert (await here.locked_for(attacker) or 0) > 25

            # An operator clears it elsewhere: the store is intact, so the clear is honoured.
            await other.clear(attacker[1])
            assert await here.locked_for(attacker) is None

            for request_id in ("r3", "r4"):
                await here.record_failure(attacker, request_id)
            assert (await here.locked_for(attacker) or 0) > 25
            shared_redis_server.flushall()
            # SECURITY: the store forgot the lockout; this process still refuses the attacker.
            assert (await here.locked_for(here.subjects("203.0.113.1", "Victim")) or 0) > 25
            assert generation.pending == "marker missing"
            assert await here.locked_for(here.subjects("203.0.113.1", "someone-else")) is None
        finally:
            await backend.close()
            audit.close()


async def test_every_instance_learns_a_lockout_at_once_and_keeps_it_through_a_flush(
    redis_url: str, shared_redis_server: RedisServer, tmp_path: Path
) -> None:
    """The other instance never read the subject before the reset: it still refuses it, because
    the lockout (and later an operator's clear) reached its memory by pub/sub."""
    config = LoginProtectionConfig(
        failures_per_ip=50, failures_per_username=2, window=60, base_lockout=30, max_lockout=60
    )
    async with open_store(redis_url) as store:
        backend = RateLimitBackend(redis_url)
        audit = AuditTrail(store, spool_dir=tmp_path / "spool")
        generation = StoreGeneration(store)
        await generation.check()
        memories = [LockoutMemory(store), LockoutMemory(store)]
        here, there = (
            LockoutService(
                store, audit, backend, config, mode="local", timeout=1, memory=m, generation=generation
            )
            for m in memories
        )
        for memory in memories:
            await memory.start()
        try:
            await asyncio.sleep(0.2)  # subscribed
            attacker = here.subjects("198.51.100.7", "victim")
            for request_id in ("r1", "r2"):
                await here.record_failure(attacker, request_id)
            key = attacker[1].key("lock")
            deadline = time.monotonic() + 3
            while memories[1].until(key) == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert memories[1].until(key) > time.time() + 25  # learnt without reading the subject
            shared_redis_server.flushall()
            assert (await there.locked_for(there.subjects("203.0.113.9", "victim")) or 0) > 25

            await there.clear(attacker[1])  # an operator clears it on the other instance
            deadline = time.monotonic() + 3
            while memories[0].until(key) != 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert memories[0].until(key) == 0
            memories[1].apply(b'{"key": "rl:other:x", "record": {"until": 1e12}}')  # not a lockout
            memories[1].apply(b'{"key": "rl:lock:ip:x", "record": {"until": "soon"}}')
            assert memories[1].until("rl:other:x") == 0 and memories[1].until("rl:lock:ip:x") == 0
        finally:
            for memory in memories:
                await memory.stop()
            await backend.close()
            audit.close()


async def test_switches_engaged_around_the_write_back_are_enforced_everywhere(
    instances: Any, shared_redis_server: RedisServer
) -> None:
    """The fail-open the old "store is the truth" rule guarded against: after a reset the
    counter restarts, so a switch engaged then must still reach every instance."""
    a: Instance = await instances("a")
    b: Instance = await instances("b")
    await a.switches.engage(spec("orders"), ttl=None, actor="t")
    for _ in range(3):
        await a.switches.engage(spec("legacy"), ttl=None, actor="t")
    await b.switches.reload()
    shared_redis_server.flushall()
    during = await a.switches.engage(spec("finance"), ttl=None, actor="t")  # before anyone noticed
    assert during.version == 1  # the counter restarted
    await asyncio.gather(a.restorer.probe(), b.restorer.probe())
    after = await b.switches.engage(spec("payroll"), ttl=None, actor="t")
    assert after.version > 4  # numbering continues above every version enforced before
    for instance in (a, b):
        await instance.switches.reload()
        targets = {s.target for s in instance.switches.index.switches}  # type: ignore[union-attr]
        assert {"orders", "legacy", "finance", "payroll"} <= targets, (instance.name, targets)
    acked, lagging = await a.switches.wait_acknowledged(after.version, timeout=2)
    assert lagging == [] and set(acked) >= {"a", "b"}


async def test_a_store_back_from_an_older_snapshot_with_the_marker_is_a_reset(tmp_path: Path) -> None:
    """Like a failover to a replica that lagged: the marker is there, the switch version did not
    move, but a revocation, a grant and a lockout written since are missing."""
    server = RedisServer(appendonly=False).start()
    made: list[Instance] = []
    try:
        a = Instance(server.url, "a", tmp_path)
        made.append(a)
        await a.start()
        await a.switches.engage(spec("orders"), ttl=None, actor="t")
        await a.revocations.revoke("acme", "alice")
        with redis.Redis(port=server.port, password=server.password) as client:
            client.save()  # the "replica" has everything up to here
        await a.revocations.revoke("acme", "bob")
        grant = await a.grants.create("acme", "sam", ["orders"], 600, created_by="t")
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        server.proc = None
        server.start()  # back from the older snapshot, same marker
        await answers(a.store)
        assert await a.store.get(MARKER_KEY) == a.generation.known
        assert await a.revocations.reload() is False  # refused: it would forget bob
        assert a.generation.pending == "security writes went back"
        enforced(a, switches={"orders"}, revoked={"acme": "bob"}, grants={grant.id})
        await a.restorer.probe()
        assert not a.restorer.restoring and await a.store.get(MARKER_KEY) == a.generation.known

        c = Instance(server.url, "c", tmp_path)
        made.append(c)
        await c.start()
        enforced(c, switches={"orders"}, revoked={"acme": "alice"}, grants={grant.id})
        enforced(c, switches=set(), revoked={"acme": "bob"}, grants=set())
        await a.restorer.probe()  # the counter no longer appears to go back: no second reset
        assert a.resets == 1 and c.resets == 0
    finally:
        for instance in made:
            await instance.close()
        server.cleanup()


async def test_first_contact_from_many_loaders_at_once_is_not_a_reset(redis_url: str) -> None:
    """Found by the lifecycle tests: loaders adopting the marker concurrently at start must
    agree on one and report nothing (a false reset makes every start degraded)."""
    async with open_store(redis_url) as store:
        generation = StoreGeneration(store)
        noticed: list[str] = []
        generation.on_reset(noticed.append)
        results = await asyncio.gather(*(generation.check() for _ in range(20)))
        assert results == [False] * 20 and noticed == []
        assert generation.known == await store.get(MARKER_KEY) is not None


async def test_a_load_spanning_a_write_back_is_refused(
    instances: Any, shared_redis_server: RedisServer
) -> None:
    a: Instance = await instances("a")
    await a.revocations.revoke("acme", "alice")
    since = a.generation.begin()  # a load begins and reads the store...
    shared_redis_server.flushall()
    await a.restorer.probe()  # ...a whole reset is noticed and written back meanwhile...
    with pytest.raises(StoreReset):
        await a.generation.verify(since)  # ...so what it read may be the empty store: refused
    await a.generation.verify(a.generation.begin())  # a load begun now is fine
