"""SyncedSnapshot: picks up published changes, resyncs on a timer, keeps serving the last
value while the store is down, and recovers when it returns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.state import StateStore, StoreUnavailable, SyncedSnapshot, open_store
from tests.support.redis_server import RedisServer
from tests.support.timing import eventually


@pytest.fixture(params=["local", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    local = f"local:{tmp_path / 'state'}"
    url = local if request.param == "local" else request.getfixturevalue("redis_url")
    async with open_store(url) as opened:
        yield opened


def loader(store: StateStore, calls: list[int] | None = None) -> Callable[[], Awaitable[bytes]]:
    async def load() -> bytes:
        if calls is not None:
            calls.append(1)
        return await store.get("switches") or b"none"

    return load


async def test_publish_triggers_reload(store: StateStore) -> None:
    await store.set("switches", b"v1")
    calls: list[int] = []
    snap = SyncedSnapshot(store, "switches", loader(store, calls), resync=60)
    await snap.start()
    try:
        await snap.wait_loaded(timeout=3)
        assert (snap.value, snap.healthy) == (b"v1", True)
        assert snap.loaded_at is not None
        await store.set("switches", b"v2")
        await store.publish("switches", b"")
        await eventually(lambda: snap.value == b"v2")
        before = len(calls)
        # a burst arriving while a reload runs coalesces into one more reload, not fifty
        await asyncio.gather(*(store.publish("switches", b"") for _ in range(50)))
        await asyncio.sleep(0.2)
        assert len(calls) - before < 25
    finally:
        await snap.stop()
    assert snap.healthy is False


async def test_periodic_resync_without_a_message(store: StateStore) -> None:
    snap = SyncedSnapshot(store, "switches", loader(store), resync=0.1)
    await snap.start()
    try:
        await snap.wait_loaded(timeout=3)
        assert snap.value == b"none"
        await store.set("switches", b"silent-change")  # no publish: a lost message
        await eventually(lambda: snap.value == b"silent-change")
    finally:
        await snap.stop()


async def test_failing_loader_keeps_last_value(tmp_path: Path) -> None:
    async with open_store(f"local:{tmp_path}") as store:
        fail = False

        async def load() -> str:
            if fail:
                raise RuntimeError("bug in load")
            return "good"

        snap = SyncedSnapshot(store, "c", load, resync=60, retry=0.05)
        await snap.start()
        await snap.wait_loaded(timeout=3)
        fail = True
        await store.publish("c", b"")
        await eventually(lambda: not snap.healthy)
        assert snap.value == "good"
        fail = False
        await eventually(lambda: snap.healthy)  # retried without waiting for a message
        await snap.stop()


async def test_redis_outage_keeps_last_value_and_recovers(redis_server: RedisServer) -> None:
    async with open_store(redis_server.url + "?socket_timeout=0.3") as store:
        await store.set("switches", b"engaged")
        snap = SyncedSnapshot(store, "switches", loader(store), resync=0.2, retry=0.05)
        await snap.start()
        try:
            await snap.wait_loaded(timeout=3)
            redis_server.stop()
            await eventually(lambda: not snap.healthy)
            assert snap.value == b"engaged"  # served from memory while Redis is down
            redis_server.start()
            await eventually(lambda: snap.healthy, timeout=5)
            await store.set("switches", b"released")
            await store.publish("switches", b"")
            await eventually(lambda: snap.value == b"released")
        finally:
            await snap.stop()


async def test_hung_redis_marks_unhealthy_via_resync(redis_server: RedisServer) -> None:
    async with open_store(redis_server.url + "?socket_timeout=0.3") as store:
        await store.set("switches", b"on")
        snap = SyncedSnapshot(store, "switches", loader(store), resync=0.1, retry=0.05)
        await snap.start()
        try:
            await snap.wait_loaded(timeout=3)
            redis_server.pause()
            await eventually(lambda: not snap.healthy)
            assert snap.value == b"on"
            redis_server.resume()
            await eventually(lambda: snap.healthy, timeout=5)
        finally:
            await snap.stop()


async def test_start_without_store_loads_once_it_appears(redis_server: RedisServer) -> None:
    redis_server.stop()
    async with open_store(redis_server.url + "?socket_timeout=0.3") as store:
        snap = SyncedSnapshot(store, "switches", loader(store), retry=0.05)
        await snap.start()
        try:
            with pytest.raises(TimeoutError):
                await snap.wait_loaded(timeout=0.3)
            assert snap.value is None and not snap.loaded
            redis_server.start()
            await snap.wait_loaded(timeout=5)
            assert snap.value == b"none" and snap.healthy
        finally:
            await snap.stop()


async def test_store_unavailable_from_loader_is_not_fatal(tmp_path: Path) -> None:
    async with open_store(f"local:{tmp_path}") as store:

        async def load() -> int:
            raise StoreUnavailable("down")

        snap = SyncedSnapshot(store, "c", load, retry=0.05, initial=7)
        await snap.start()
        await asyncio.sleep(0.2)
        assert (snap.value, snap.healthy, snap.loaded) == (7, False, False)
        await snap.stop()


async def test_watchers_see_every_new_value_and_cannot_break_the_refresh(store: StateStore) -> None:
    await store.set("switches", b"v1")
    snap = SyncedSnapshot(store, "switches", loader(store), resync=60)
    seen: list[bytes | None] = []

    def broken() -> None:
        raise RuntimeError("a watcher's bug")

    snap.watch(broken)
    snap.watch(lambda: seen.append(snap.value))
    await snap.start()
    try:
        await snap.wait_loaded(timeout=3)
        await store.set("switches", b"v2")
        await store.publish("switches", b"")
        await eventually(lambda: seen[-1:] == [b"v2"])  # loaded by pub/sub, past the broken one
        snap.replace(b"local")  # a write of this instance, before its round trip
        assert (seen[0], seen[-1], snap.value) == (b"v1", b"local", b"local")
    finally:
        await snap.stop()


async def test_a_load_overlapping_a_local_write_does_not_roll_it_back(store: StateStore) -> None:
    """A load that read the store before a local write (``replace``) must not overwrite that
    write when it finishes: a store reset right then would lose it for good (App. C)."""
    await store.set("switches", b"old")
    release = asyncio.Event()
    slow = False

    async def load() -> bytes:
        value = await store.get("switches") or b"none"
        if slow:
            await release.wait()  # read, then held: the local write lands meanwhile
        return value

    snap = SyncedSnapshot(store, "switches", load, resync=60)
    assert await snap.reload() is True and snap.value == b"old"
    slow = True
    pending = asyncio.create_task(snap.reload())
    await asyncio.sleep(0.05)
    await store.set("switches", b"new")
    snap.replace(b"new")
    release.set()
    assert await pending is True
    assert snap.value == b"new"
    slow = False
    assert await snap.reload() is True and snap.value == b"new"  # the next load sees the write


async def test_a_steady_stream_of_local_writes_does_not_starve_loads(store: StateStore) -> None:
    """Every load here overlaps a local write (review LOW, "reload starvation"): loads used to
    be discarded then, so a write made elsewhere (a grant revoked on another instance) was never
    learnt while local writes kept coming. Writes made with ``update`` are applied again on top
    of the overlapping load instead, and never rolled back by it."""
    writes = 0
    overlapping = bare = False
    snap: SyncedSnapshot[dict[str, int]]

    async def local_write() -> None:
        nonlocal writes
        writes += 1
        name = f"local{writes}"
        await store.hset("epochs", name, b"1")
        snap.update(lambda current: {**current, name: 1})

    async def load() -> dict[str, int]:
        value = {k: int(v) for k, v in (await store.hgetall("epochs")).items()}
        if bare:
            snap.replace({"replaced": 1})
        elif overlapping:
            await local_write()  # lands after this load read the store: the load predates it
        return value

    snap = SyncedSnapshot(store, "epochs", load, resync=60)
    assert await snap.reload() is True and snap.value == {}
    overlapping = True
    await store.hset("epochs", "remote", b"7")  # another instance's write
    for n in range(1, 6):
        assert await snap.reload() is True
        assert snap.value == {"remote": 7, **{f"local{i}": 1 for i in range(1, n + 1)}}, n
    # A bare replace overlapping a load still discards it (it cannot be applied again).
    bare = True
    assert await snap.reload() is True and snap.value == {"replaced": 1}
