"""The audit write queue (``gateway.audit.writer``): records leave the request at once, are
never dropped, keep each tenant's order, and land exactly once even when a spill overtakes an
append in flight."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditTrail
from gateway.errors import StoreUnavailable
from gateway.state import StateStore, open_store
from gateway.state.bounded import BoundedStore
from tests.support.redis_server import RedisServer
from tests.unit.audit.conftest import FlakyStore, stored_records

TENANTS = ("acme", "globex", "initech")


async def until(check: Any, timeout: float = 20.0) -> None:
    """Poll ``check()`` (sync or async) until it is true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


class GatedStore:
    """A real store whose ``gated`` methods, on their first call, wait for ``release(name)``
    before they run for real: an append (or lease, or read) held for as long as the test wants."""

    def __init__(self, inner: StateStore, *gated: str) -> None:
        self._inner = inner
        self.gates = {name: asyncio.Event() for name in gated}
        self.waiting = {name: asyncio.Event() for name in gated}

    def release(self, name: str) -> None:
        self.gates[name].set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self.gates:
            return attr
        if name == "log_read":
            return self._log_read

        async def call(*args: Any, **kwargs: Any) -> Any:
            await self._hold(name)
            return await attr(*args, **kwargs)

        return call

    async def _hold(self, name: str) -> None:
        if not self.waiting[name].is_set():
            self.waiting[name].set()
            await self.gates[name].wait()

    async def _log_read(self, *args: Any, **kwargs: Any) -> Any:
        await self._hold("log_read")
        async for row in self._inner.log_read(*args, **kwargs):
            yield row


async def exactly_once(store: StateStore, trail: AuditTrail, tenant: str, expected: list[str]) -> None:
    events = [r["details"]["n"] for r in await stored_records(store, tenant)]
    assert sorted(events) == sorted(expected)  # every record, none twice
    assert len(events) == len(set(events))
    result = await trail.verify(tenant)
    assert result.ok, result.problem


async def test_submit_queues_and_the_writer_appends_in_each_tenants_order(
    store: StateStore, tmp_path: Path
) -> None:
    trail = AuditTrail(store, spool_dir=tmp_path / "spool")
    sent: dict[str, list[str]] = {t: [] for t in TENANTS}
    for i in range(300):  # more than one batch, tenants interleaved
        tenant = TENANTS[i % 3 if i % 7 else 0]
        trail.submit("data.accessed", tenants=[tenant], actor="u", details={"n": f"{tenant}-{i}"})
        sent[tenant].append(f"{tenant}-{i}")
    assert trail.queued_count > 0  # nothing was awaited: the records wait in the queue
    await trail.flush()
    assert trail.queued_count == 0 and trail.spooled_count == 0
    for tenant in TENANTS:
        assert [r["details"]["n"] for r in await stored_records(store, tenant)] == sent[tenant]
        assert (await trail.verify(tenant)).ok
    trail.close()


async def test_full_queue_spills_in_order_and_nothing_is_lost(store: StateStore, tmp_path: Path) -> None:
    trail = AuditTrail(store, spool_dir=tmp_path / "spool", queue_size=5, retry_interval=0)
    names = [f"r{i}" for i in range(40)]
    for name in names:  # no await between: the writer cannot drain, the queue overflows
        trail.submit("data.accessed", tenants=["acme"], actor="u", details={"n": name})
    assert trail.spooled_count > 0
    await until(lambda: trail.spooled_count == 0 and trail.queued_count == 0)
    assert [r["details"]["n"] for r in await stored_records(store, "acme")] == names
    assert (await trail.verify("acme")).ok
    trail.close()


async def spill_overtakes(store: StateStore, tmp_path: Path, gated: str) -> tuple[AuditTrail, GatedStore]:
    """Hold "first" at ``gated``, overflow the queue twice (each spill takes the whole queue,
    "first" too), then let "first" go on; returns the trail once "first" is in the store."""
    gate = GatedStore(store, gated, "log_read")  # log_read: the replay's look-up, held too
    trail = AuditTrail(gate, spool_dir=tmp_path / "spool", queue_size=3, retry_interval=0)  # type: ignore[arg-type]
    trail.submit("data.accessed", tenants=["acme"], actor="u", details={"n": "first"})
    await asyncio.wait_for(gate.waiting[gated].wait(), 10)  # "first" is in flight, at the gate
    for name in NAMES[1:]:  # overflows at r3 and r7
        trail.submit("data.accessed", tenants=["acme"], actor="u", details={"n": name})
    assert trail.spooled_count == len(NAMES)
    assert trail.queued_count == 0
    gate.release(gated)
    await asyncio.wait_for(gate.waiting["log_read"].wait(), 10)  # the replay begins: "first" landed
    assert [r["details"]["n"] for r in await stored_records(store, "acme")] == ["first"]
    return trail, gate


NAMES = ["first", *(f"r{i}" for i in range(8))]


async def test_spill_that_overtakes_an_append_in_flight_lands_it_once(
    store: StateStore, tmp_path: Path
) -> None:
    """The append had journalled its attempt before the spill: the spool line carries it, and
    the replay finds the record in the store instead of appending it again."""
    trail, gate = await spill_overtakes(store, tmp_path, "log_append")
    gate.release("log_read")
    await until(lambda: trail.spooled_count == 0 and trail.queued_count == 0)
    await exactly_once(store, trail, "acme", NAMES)
    assert [r["details"]["n"] for r in await stored_records(store, "acme")] == NAMES
    trail.close()


async def test_spill_before_the_append_is_sent_journals_its_try_then(redis_url: str, tmp_path: Path) -> None:
    """Held at the chain lease (Redis only; the local store takes no lease): the spill came
    first, so the append wrote its try line to the spool before it was sent. A process that
    dies right then leaves a spool whose replay, by another process, still appends it once."""
    async with open_store(redis_url) as store:
        trail, _ = await spill_overtakes(store, tmp_path, "set")
        trail.close()  # the process "dies" before its own replay
        successor = AuditTrail(store, spool_dir=tmp_path / "spool")
        assert await successor.replay_spool() == len(NAMES)
        await exactly_once(store, successor, "acme", NAMES)
        assert [r["details"]["n"] for r in await stored_records(store, "acme")] == NAMES
        successor.close()


async def test_hung_redis_the_writer_spills_and_everything_lands_once_after_resume(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with open_store(redis_server.url) as store:
        trail = AuditTrail(
            store, spool_dir=tmp_path / "spool", write_timeout=0.2, retry_interval=0.2, lock_ttl=1.0
        )
        trail.submit("data.accessed", tenants=["acme"], actor="u", details={"n": "before"})
        await trail.flush()
        redis_server.pause()
        names = ["before"]
        try:
            for i in range(30):
                tenant = TENANTS[i % 3]
                trail.submit("data.accessed", tenants=[tenant], actor="u", details={"n": f"p{i}"})
                names.append(f"p{i}")
                await asyncio.sleep(0.01)
            await until(lambda: trail.spooled_count >= 30 and trail.queued_count == 0)
        finally:
            redis_server.resume()
        await until(lambda: trail.spooled_count == 0, timeout=30)  # a stale lease holds ~lock_ttl
        for tenant in TENANTS:
            expected = [n for n in names if n == "before" and tenant == "acme"]
            expected += [f"p{i}" for i in range(30) if TENANTS[i % 3] == tenant]
            await exactly_once(store, trail, tenant, expected)
        trail.close()


async def test_close_spools_what_is_still_queued(store: StateStore, tmp_path: Path) -> None:
    first = AuditTrail(store, spool_dir=tmp_path / "spool")
    for i in range(5):
        first.submit("data.accessed", tenants=["acme"], actor="u", details={"n": f"q{i}"})
    first.close()  # the writer never ran: the records must not die with the queue
    second = AuditTrail(store, spool_dir=tmp_path / "spool")
    assert await second.replay_spool() == 5
    await exactly_once(store, second, "acme", [f"q{i}" for i in range(5)])
    second.close()


async def test_submit_refuses_caller_bugs_at_once(store: StateStore, tmp_path: Path) -> None:
    trail = AuditTrail(store, spool_dir=tmp_path / "spool")
    with pytest.raises(ValueError):
        trail.submit("e", tenants="acme", actor="u")  # a string, not a list
    with pytest.raises(ValueError):
        trail.submit("e", tenants=["no:colons"], actor="u")
    assert trail.queued_count == 0
    trail.close()


async def test_bounded_store_gives_up_on_a_hung_redis(redis_server: RedisServer) -> None:
    # The socket timeout is far longer than the bound: only the bound can end the wait.
    async with open_store(redis_server.url + "?socket_timeout=60") as store:
        bounded = BoundedStore(store, lambda: 0.1)
        await bounded.set("k", b"v")
        redis_server.pause()
        try:
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(bounded.get("k"), 30)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(bounded.hgetall("h"), 30)
        finally:
            redis_server.resume()
        assert await bounded.get("k") == b"v"  # the cancelled command's connection was dropped


async def test_a_full_queue_and_a_refusing_disk_is_an_error_never_a_silent_loss(
    store: StateStore, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    flaky = FlakyStore(store)
    flaky.down = True
    trail = AuditTrail(flaky, spool_dir=blocker, queue_size=2)  # type: ignore[arg-type]
    trail.submit("data.accessed", tenants=["acme"], actor="u", details={"n": "a0"})
    trail.submit("data.accessed", tenants=["acme"], actor="u", details={"n": "a1"})
    with pytest.raises(OSError):  # the caller learns it (access audit logs it, grant.used fails closed)
        trail.submit("data.accessed", tenants=["acme"], actor="u", details={"n": "a2"})
    assert trail.queued_count == 2  # what was accepted is kept and written later
    flaky.down = False
    await until(lambda: trail.queued_count == 0)
    assert [r["details"]["n"] for r in await stored_records(store, "acme")] == ["a0", "a1"]
    trail.close()
