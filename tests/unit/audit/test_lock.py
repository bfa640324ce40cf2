"""The chain lock: a store lease on shared stores, given up safely when it may have expired."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditTrail
from gateway.audit.lock import chain_lock
from gateway.errors import StoreUnavailable
from gateway.state import StateStore, open_store
from tests.unit.audit.conftest import stored_records


@pytest.fixture
async def redis_store(redis_url: str) -> Any:
    async with open_store(redis_url) as store:
        yield store


async def test_lease_is_taken_and_released_on_a_shared_store(redis_store: StateStore) -> None:
    async with chain_lock(redis_store, "acme", ttl=10, wait=1) as lease:
        assert lease.valid()
        assert await redis_store.get("audit-lock:acme") is not None
    assert await redis_store.keys("audit-lock:") == []


async def test_no_lease_key_on_a_local_store(tmp_path: Path) -> None:
    async with (
        open_store(f"local:{tmp_path / 'state'}") as store,
        chain_lock(store, "acme", ttl=10, wait=1),
    ):
        assert await store.keys("") == []


async def test_held_lease_makes_writers_wait_then_spool(redis_store: StateStore, tmp_path: Path) -> None:
    # Another instance holds the tenant's lease (and, say, crashed): writers wait `lock_wait`...
    await redis_store.set("audit-lock:acme", b"someone-else", ttl=30)
    trail = AuditTrail(redis_store, spool_dir=tmp_path / "spool", lock_wait=0.2, retry_interval=0)
    await trail.record("e1", tenants=["acme"], actor="a")
    assert trail.spooled_count == 1  # ...then spool rather than lose or fork
    await redis_store.delete("audit-lock:acme")  # the lease expires
    await trail.record("e2", tenants=["acme"], actor="a")
    assert trail.spooled_count == 0
    assert [r["event"] for r in await stored_records(redis_store, "acme")] == ["e1", "e2"]
    assert (await trail.verify("acme")).ok
    trail.close()


async def test_someone_elses_lease_is_never_deleted(redis_store: StateStore) -> None:
    async with chain_lock(redis_store, "acme", ttl=10, wait=1):
        await redis_store.set("audit-lock:acme", b"other-token", ttl=10)  # (simulated takeover)
    assert await redis_store.get("audit-lock:acme") == b"other-token"


class SlowHead:
    """A store whose log_length stalls, as a paused process would between lock and append."""

    def __init__(self, inner: StateStore, delay: float) -> None:
        self._inner, self._delay = inner, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def log_length(self, stream: str) -> int:
        await asyncio.sleep(self._delay)
        return await self._inner.log_length(stream)


async def test_writer_that_outlived_half_its_lease_does_not_append(
    redis_store: StateStore, tmp_path: Path
) -> None:
    slow = SlowHead(redis_store, delay=0.15)
    trail = AuditTrail(slow, spool_dir=tmp_path / "spool", lock_ttl=0.2, retry_interval=3600)  # type: ignore[arg-type]
    await trail.record("late", tenants=["acme"], actor="a")
    assert trail.spooled_count == 1
    assert await stored_records(redis_store, "acme") == []
    # The lease was left to expire rather than deleted (it may belong to someone else by now).
    await asyncio.sleep(0.25)
    assert await redis_store.keys("audit-lock:") == []
    slow._delay = 0
    assert await trail.replay_spool() == 1
    assert (await trail.verify("acme")).ok
    trail.close()


async def test_lease_check_raises_store_unavailable(redis_store: StateStore) -> None:
    async with chain_lock(redis_store, "acme", ttl=0.05, wait=1) as lease:
        await asyncio.sleep(0.03)
        with pytest.raises(StoreUnavailable):
            lease.check()


async def test_trails_on_one_store_object_share_the_in_process_lock(
    store: StateStore, tmp_path: Path
) -> None:
    trails = [AuditTrail(store, spool_dir=tmp_path / f"s{i}") for i in range(3)]
    await asyncio.gather(*(trails[i % 3].record("e", tenants=["acme"], actor=str(i)) for i in range(30)))
    result = await trails[0].verify("acme")
    assert result.ok and result.records == 30
    for trail in trails:
        trail.close()
