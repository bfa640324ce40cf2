"""Audit writes never vanish: spooled to disk while the store is down, replayed in order."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest

from gateway.audit import AuditTrail
from gateway.audit.spool import PendingRecord, Spool
from gateway.state import StateStore, open_store
from tests.support.redis_server import RedisServer
from tests.unit.audit.conftest import FakeClock, FlakyStore, stored_records


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("audit-spool-*.jsonl"))


async def test_redis_stopped_mid_run_nothing_lost_order_kept(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    clock = FakeClock()
    spool_dir = tmp_path / "spool"
    async with open_store(redis_server.url) as store:
        trail = AuditTrail(store, spool_dir=spool_dir, clock=clock, retry_interval=0)
        for i in range(5):
            await trail.record("e", tenants=["acme"], actor=f"a{i}", details={"i": i})
            clock.advance(1)
        redis_server.stop()
        for i in range(5, 15):
            await trail.record("e", tenants=["acme", "_system"], actor=f"a{i}", details={"i": i})
            clock.advance(1)
        assert trail.spooled_count == 20
        (path,) = spool_files(spool_dir)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700
        assert len(path.read_bytes().splitlines()) == 20  # fsync'd lines, one per tenant copy
        redis_server.start()
        # The next write replays the spool first, so it lands after everything spooled.
        await trail.record("e", tenants=["acme"], actor="a15", details={"i": 15})
        assert trail.spooled_count == 0
        assert path.read_bytes() == b""
        records = await stored_records(store, "acme")
        assert [r["details"]["i"] for r in records] == list(range(16))
        assert [r["seq"] for r in records] == list(range(1, 17))
        # time is the original event time; seq/prev_hash were assigned at replay.
        assert records[5]["time"] == "2026-11-27T19:02:45.123Z"
        assert [r["details"]["i"] for r in await stored_records(store, "_system")] == list(range(5, 15))
        for tenant in ("acme", "_system"):
            result = await trail.verify(tenant)
            assert result.ok, result.problem
        trail.close()
    assert spool_files(spool_dir) == []  # an empty spool leaves no file behind


async def test_backoff_then_periodic_replay(store: StateStore, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    trail = AuditTrail(flaky, spool_dir=tmp_path / "spool", retry_interval=3600)  # type: ignore[arg-type]
    flaky.down = True
    await trail.record("one", tenants=["acme"], actor="a")
    flaky.down = False
    await trail.record("two", tenants=["acme"], actor="a")  # still in backoff: queued behind "one"
    assert trail.spooled_count == 2
    assert await stored_records(store, "acme") == []
    assert await trail.replay_spool() == 2  # the owner's periodic call
    assert [r["event"] for r in await stored_records(store, "acme")] == ["one", "two"]
    assert await trail.replay_spool() == 0
    trail.close()


async def test_replay_stops_at_failure_and_resumes_in_order(store: StateStore, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    trail = AuditTrail(flaky, spool_dir=tmp_path / "spool", retry_interval=0)  # type: ignore[arg-type]
    flaky.down = True
    for i in range(4):
        await trail.record(f"e{i}", tenants=["acme"], actor="a")
    assert trail.spooled_count == 4
    assert await trail.replay_spool() == 0
    flaky.down = False
    assert await trail.replay_spool() == 4
    assert [r["event"] for r in await stored_records(store, "acme")] == ["e0", "e1", "e2", "e3"]
    trail.close()


async def test_append_whose_reply_was_lost_is_not_duplicated(store: StateStore, tmp_path: Path) -> None:
    flaky = FlakyStore(store)
    trail = AuditTrail(flaky, spool_dir=tmp_path / "spool", retry_interval=0)  # type: ignore[arg-type]
    flaky.lose_append_replies = 1
    await trail.record("landed", tenants=["acme"], actor="a")
    assert trail.spooled_count == 1  # the outcome was unknown, so it was spooled
    flaky.lose_append_replies = 1
    assert await trail.replay_spool() == 1  # resolved: found in the store with the hash it built
    assert flaky.lose_append_replies == 1  # ...without appending it again
    flaky.lose_append_replies = 0
    await trail.record("next", tenants=["acme"], actor="a")
    assert trail.spooled_count == 0
    assert [r["event"] for r in await stored_records(store, "acme")] == ["landed", "next"]
    assert (await trail.verify("acme")).ok
    trail.close()


async def test_spool_of_a_dead_process_is_adopted(store: StateStore, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    flaky = FlakyStore(store)
    first = AuditTrail(flaky, spool_dir=spool_dir)  # type: ignore[arg-type]
    flaky.down = True
    for i in range(3):
        await first.record(f"e{i}", tenants=["acme"], actor="a")
    # While its owner lives, another process leaves the file alone (flock).
    other = AuditTrail(store, spool_dir=spool_dir)
    assert await other.replay_spool() == 0
    first.close()  # the process "dies": its file stays, unlocked
    assert len(spool_files(spool_dir)) == 1
    assert await other.replay_spool() == 3
    assert [r["event"] for r in await stored_records(store, "acme")] == ["e0", "e1", "e2"]
    assert spool_files(spool_dir) == []
    other.close()


async def test_adopted_spool_with_an_append_that_landed_before_the_crash(
    store: StateStore, tmp_path: Path
) -> None:
    """A process crashed after journaling a try and appending, before learning the outcome."""
    spool_dir = tmp_path / "spool"
    flaky = FlakyStore(store)
    first = AuditTrail(flaky, spool_dir=spool_dir, retry_interval=0)  # type: ignore[arg-type]
    flaky.down = True
    await first.record("a", tenants=["acme"], actor="x")
    await first.record("b", tenants=["acme"], actor="x")
    flaky.down = False
    flaky.lose_append_replies = 1
    assert await first.replay_spool() == 0  # "a" landed, reply lost; its try line is on disk
    first.close()
    (path,) = spool_files(spool_dir)
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line["op"] for line in lines] == ["rec", "rec", "try"]
    second = AuditTrail(store, spool_dir=spool_dir)
    assert await second.replay_spool() == 2
    assert [r["event"] for r in await stored_records(store, "acme")] == ["a", "b"]
    assert (await second.verify("acme")).ok
    second.close()


def test_torn_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    good = PendingRecord("acme", "2026-11-27T19:02:40.123Z", "e", "a", None, None, {}, spool_id=1)
    path = spool_dir / "audit-spool-1-dead.jsonl"
    path.write_bytes(orjson.dumps(good.line()) + b"\n" + b'{"op": "rec", "id": 2}\n[1]\n{"op": "rec", "te')
    spool = Spool(spool_dir)
    assert spool.adopt_orphans() == 1
    assert spool.peek() is not None and spool.peek().event == "e"  # type: ignore[union-attr]
    spool.close()


async def test_spool_write_failure_is_not_silent(store: StateStore, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    flaky = FlakyStore(store)
    trail = AuditTrail(flaky, spool_dir=blocker, retry_interval=0)  # type: ignore[arg-type]
    flaky.down = True
    with pytest.raises(OSError):
        await trail.record("e", tenants=["acme"], actor="a")
    assert trail.spooled_count == 0


def test_spool_file_is_private_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        spool = Spool(tmp_path / "spool")
        spool.add([PendingRecord("acme", "t", "e", None, None, None, {})])
    finally:
        os.umask(old)
    (path,) = spool_files(tmp_path / "spool")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    spool.close()
