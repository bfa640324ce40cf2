"""Session revocation epochs on both store backends: tenant and user scope, monotonic epochs
(also under concurrent revocations), propagation to a second instance within 1 s, enforcement
from the last snapshot during a Redis outage, tenant purge, restart, fail-closed before load."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from gateway.audit.purge import registered_tenant_data
from gateway.auth.revocation import (
    REVOCATION_INDEX,
    RevocationEpochs,
    RevocationsUnavailable,
)
from gateway.errors import StoreUnavailable
from gateway.state import StateStore, open_store
from tests.support.redis_server import RedisServer
from tests.support.timing import Clock, eventually

T0 = 1_700_000_000.25  # a revocation a quarter into a second


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def epochs(store: StateStore, clock: Clock) -> AsyncIterator[RevocationEpochs]:
    revocations = RevocationEpochs(store, clock=clock, resync=60)
    await revocations.start()
    await revocations.wait_loaded(timeout=3)
    yield revocations
    await revocations.stop()


async def fresh_view(store: StateStore) -> RevocationEpochs:
    """What another instance (or this one after a restart) would load from the store."""
    other = RevocationEpochs(store)
    assert await other.reload()
    return other


def test_revocations_are_not_deleted_by_a_tenant_purge() -> None:
    assert "revocations:{tenant}:" not in registered_tenant_data()
    assert not REVOCATION_INDEX.startswith("revocations:")  # a tenant purge never matches the index


async def test_revoke_tenant(epochs: RevocationEpochs, store: StateStore, clock: Clock) -> None:
    second = math.floor(T0)
    assert not epochs.is_revoked("acme", "alice", second)
    epoch = await epochs.revoke("acme")
    assert epoch == T0
    assert epochs.is_revoked("acme", "alice", second)  # the revoking instance: at once, no await
    for view in (epochs, await fresh_view(store)):  # enforced at once here, and stored for others
        assert view.is_revoked("acme", "alice", second - 3600)
        assert view.is_revoked("acme", "bob", second)  # same second as the revocation: revoked
        assert not view.is_revoked("acme", "alice", second + 1)  # issued after: accepted
        assert not view.is_revoked("globex", "alice", second - 3600)  # other tenants unaffected
        assert not view.is_revoked("acme2", "alice", second - 3600)


async def test_revoke_user_only(epochs: RevocationEpochs, store: StateStore) -> None:
    second = math.floor(T0)
    assert await epochs.revoke("acme", "alice") == T0
    for view in (epochs, await fresh_view(store)):
        assert view.is_revoked("acme", "alice", second)
        assert not view.is_revoked("acme", "alice", second + 1)
        assert not view.is_revoked("acme", "bob", second)  # same tenant, other user
        assert not view.is_revoked("globex", "alice", second)  # same user id, other tenant


async def test_user_ids_with_separators_and_emails(epochs: RevocationEpochs, store: StateStore) -> None:
    odd = ["a:b", "x|y", '["u","z",1]', "mail@example.com", "tab\there", "ünï"]
    for user in odd:
        await epochs.revoke("acme", user)
    view = await fresh_view(store)
    assert all(view.is_revoked("acme", user, int(T0)) for user in odd)
    assert not view.is_revoked("acme", "a", int(T0))
    assert (await epochs.list("acme"))["users"].keys() == set(odd)


async def test_epochs_never_move_backwards(epochs: RevocationEpochs, store: StateStore, clock: Clock) -> None:
    clock.now = T0 + 100
    assert await epochs.revoke("acme") == T0 + 100
    assert await epochs.revoke("acme", "alice") == T0 + 100
    clock.now = T0  # this instance's clock is behind the one that revoked (skew or NTP step)
    assert await epochs.revoke("acme") == T0 + 100
    assert await epochs.revoke("acme", "alice") == T0 + 100
    for view in (epochs, await fresh_view(store)):
        assert view.is_revoked("acme", "bob", int(T0) + 50)
        assert view.is_revoked("acme", "alice", int(T0) + 100)
    clock.now = T0 + 200
    assert await epochs.revoke("acme") == T0 + 200
    # superseded fields are compacted away: one per scope
    assert len(await store.hgetall("revocations:acme:")) == 2


async def test_concurrent_revocations_keep_the_largest(store_url: str) -> None:
    """Many instances with skewed clocks revoking at once: the largest epoch wins, always."""
    async with open_store(store_url) as s1, open_store(store_url) as s2:
        rng = random.Random(7)
        stamps = [T0 + rng.uniform(-5, 5) for _ in range(40)]
        writers = [
            RevocationEpochs(s1 if i % 2 else s2, clock=Clock(stamp)) for i, stamp in enumerate(stamps)
        ]
        await asyncio.gather(
            *(w.revoke("acme", "alice" if i % 3 == 0 else None) for i, w in enumerate(writers))
        )
        view = await fresh_view(s1)
        entry = view.snapshot_of("acme")
        assert entry is not None
        assert entry.tenant == max(s for i, s in enumerate(stamps) if i % 3)
        assert entry.users["alice"] == max(s for i, s in enumerate(stamps) if i % 3 == 0)


async def test_second_instance_sees_revocation_within_one_second(redis_url: str) -> None:
    async with open_store(redis_url) as store_a, open_store(redis_url) as store_b:
        # resync=60: only pub/sub can deliver within the second
        a, b = RevocationEpochs(store_a, resync=60), RevocationEpochs(store_b, resync=60)
        await a.start()
        await b.start()
        try:
            await a.wait_loaded(timeout=3)
            await b.wait_loaded(timeout=3)
            for tenant, user in (("acme", None), ("globex", "alice")):
                iat = int(time.time())
                assert not b.is_revoked(tenant, "alice", iat)
                started = time.monotonic()  # includes the revoking instance's own store writes
                await a.revoke(tenant, user)
                deadline = started + 1.0
                while not b.is_revoked(tenant, "alice", iat):
                    assert time.monotonic() < deadline, "revocation not seen by instance B within 1 s"
                    await asyncio.sleep(0.001)
                latency = time.monotonic() - started
                scope = "tenant" if user is None else "user"
                print(f"\nrevocation ({scope}) seen by instance B after {latency * 1000:.1f} ms")
                assert not b.is_revoked("initech", "alice", iat)
                assert b.is_revoked(tenant, "bob", iat) is (user is None)
        finally:
            await a.stop()
            await b.stop()


async def test_redis_outage_keeps_enforcing_last_snapshot(redis_server: RedisServer) -> None:
    url = redis_server.url + "?socket_timeout=0.3"
    async with open_store(url) as store_a, open_store(url) as store_b:
        a = RevocationEpochs(store_a, resync=60)
        b = RevocationEpochs(store_b, resync=0.2, retry=0.05)
        await b.start()
        try:
            await b.wait_loaded(timeout=3)
            iat = int(time.time())  # before revoking: a token issued just before the revocation
            await a.revoke("acme", "alice")
            await eventually(lambda: b.is_revoked("acme", "alice", iat))
            assert b.healthy

            redis_server.stop()
            await eventually(lambda: not b.healthy)
            assert b.is_revoked("acme", "alice", iat)  # still enforced from memory
            assert not b.is_revoked("acme", "bob", iat)
            with pytest.raises(StoreUnavailable):
                await a.revoke("acme")  # the operator is told; retrying later is safe

            redis_server.start()
            await eventually(lambda: b.healthy, timeout=5)
            assert b.is_revoked("acme", "alice", iat)  # persisted across the Redis restart
            later = int(time.time())
            await a.revoke("acme")
            await eventually(lambda: b.is_revoked("acme", "bob", later), timeout=1)
        finally:
            await b.stop()


async def test_seal_revokes_the_whole_tenant_and_drops_user_ids(
    epochs: RevocationEpochs, store: StateStore, clock: Clock
) -> None:
    """A purge seals the tenant: no token revoked before stays honoured (App. C), and the user
    ids (personal data) are gone from the store."""
    await epochs.revoke("acme", "alice")
    await epochs.revoke("acme2", "bob")  # shares the "acme" prefix without the separator
    clock.now += 5
    sealed = await epochs.seal_tenant("acme")
    assert sealed == T0 + 5
    fields = await store.hgetall("revocations:acme:")
    assert len(fields) == 1 and "alice" not in next(iter(fields))
    other = await fresh_view(store)  # another instance, after the seal
    for view in (epochs, other):
        assert view.is_revoked("acme", "alice", int(T0))
        assert view.is_revoked("acme", "carol", int(T0 + 5))  # every session of the tenant ends
        assert not view.is_revoked("acme", "carol", int(T0 + 6))  # a later login works
        assert view.is_revoked("acme2", "bob", int(T0))
        assert not view.is_revoked("acme2", "carol", int(T0))
    assert await store.smembers(REVOCATION_INDEX) == {"acme", "acme2"}


async def test_revocation_racing_index_pruning_is_not_lost(store: StateStore, clock: Clock) -> None:
    """A revocation landing between the loader's "hash is empty" read and its srem (the worst
    interleaving) must stay in the index and in the snapshot."""
    await store.sadd(REVOCATION_INDEX, "acme")  # stale entry: the tenant was purged
    racer = RevocationEpochs(store, clock=clock)

    class RacingStore:
        def __init__(self, inner: StateStore) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def srem(self, key: str, *members: str) -> int:
            await racer.revoke("acme", "alice")  # hset + sadd complete before the srem
            return await self.inner.srem(key, *members)

    loader = RevocationEpochs(cast(StateStore, RacingStore(store)))
    assert await loader.reload()
    assert loader.is_revoked("acme", "alice", int(T0))
    assert await store.smembers(REVOCATION_INDEX) == {"acme"}


async def test_restart_keeps_revocations(tmp_path: Path, clock: Clock) -> None:
    url = f"local:{tmp_path / 'state'}"
    async with open_store(url) as store:
        first = RevocationEpochs(store, clock=clock)
        await first.start()
        await first.wait_loaded(timeout=3)
        await first.revoke("acme")
        await first.revoke("globex", "alice")
        await first.stop()
    async with open_store(url) as store:
        second = RevocationEpochs(store, clock=clock)
        await second.start()
        try:
            await second.wait_loaded(timeout=3)
            assert second.is_revoked("acme", "bob", int(T0))
            assert second.is_revoked("globex", "alice", int(T0))
            assert not second.is_revoked("globex", "bob", int(T0))
        finally:
            await second.stop()


async def test_fails_closed_until_loaded(store: StateStore) -> None:
    revocations = RevocationEpochs(store)
    assert not revocations.loaded
    with pytest.raises(RevocationsUnavailable) as info:
        revocations.is_revoked("acme", "alice", 1)
    assert info.value.status == 503
    await revocations.revoke("acme")  # writing works without a snapshot
    assert await revocations.reload()
    assert revocations.loaded and revocations.is_revoked("acme", "alice", 1)


async def test_start_with_redis_down_then_loads(redis_server: RedisServer) -> None:
    redis_server.stop()
    async with open_store(redis_server.url + "?socket_timeout=0.3") as store:
        revocations = RevocationEpochs(store, retry=0.05)
        await revocations.start()
        try:
            with pytest.raises(TimeoutError):
                await revocations.wait_loaded(timeout=0.3)
            with pytest.raises(RevocationsUnavailable):
                revocations.is_revoked("acme", "alice", 1)
            redis_server.start()
            await revocations.wait_loaded(timeout=5)
            assert not revocations.is_revoked("acme", "alice", 1)
        finally:
            await revocations.stop()


async def test_non_finite_iat_is_revoked(epochs: RevocationEpochs) -> None:
    assert epochs.is_revoked("acme", "alice", math.nan)
    assert epochs.is_revoked("acme", "alice", math.inf)
    assert not epochs.is_revoked("acme", "alice", int(T0))
    assert not epochs.is_revoked("acme", "alice", 10**400)  # huge ints compare exactly, no crash


async def test_list_shows_rfc3339(epochs: RevocationEpochs, clock: Clock) -> None:
    assert await epochs.list("acme") == {"tenant": None, "users": {}}
    clock.now = 1_767_225_600.5  # 2026-01-01T00:00:00.5Z
    await epochs.revoke("acme")
    clock.now += 60
    await epochs.revoke("acme", "bob")
    await epochs.revoke("acme", "alice")
    assert await epochs.list("acme") == {
        "tenant": "2026-01-01T00:00:00.500Z",
        "users": {"alice": "2026-01-01T00:01:00.500Z", "bob": "2026-01-01T00:01:00.500Z"},
    }


@pytest.mark.parametrize("tenant", ["", "a:b", "with space", ".dot", "x" * 129])
async def test_bad_tenant_rejected(epochs: RevocationEpochs, tenant: str) -> None:
    with pytest.raises(ValueError):
        await epochs.revoke(tenant)
    with pytest.raises(ValueError):
        await epochs.list(tenant)


@pytest.mark.parametrize("user", ["", "x" * 1025, "bad\ud800surrogate"])
async def test_bad_user_rejected(epochs: RevocationEpochs, user: str) -> None:
    with pytest.raises(ValueError):
        await epochs.revoke("acme", user)


async def test_malformed_fields_are_skipped_not_fatal(
    epochs: RevocationEpochs, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    await epochs.revoke("acme", "alice")
    for junk in (
        "not json",
        '["*"]',
        '["*", "1"]',
        '["u", "", 5]',
        '["*", -1]',
        orjson.dumps(["*", True]).decode(),
    ):
        await store.hset("revocations:acme:", junk, b"")
    view = await fresh_view(store)
    assert view.healthy and view.is_revoked("acme", "alice", int(T0))
    assert not view.is_revoked("acme", "bob", 0)
    assert "malformed field" in caplog.text
