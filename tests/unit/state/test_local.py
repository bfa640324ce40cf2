"""local: backend specifics - durability across restarts, file safety, failure wrapping."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from gateway.state import StoreUnavailable, open_store
from gateway.state.local import LocalStore


async def test_state_survives_close_and_reopen(tmp_path: Path) -> None:
    url = f"local:{tmp_path / 'state'}"
    async with open_store(url) as store:
        await store.set("switch", b"engaged")
        await store.set("lockout", b"1", ttl=3600)
        await store.set("gone", b"x", ttl=0.05)
        await store.incr("counter", 3)
        await store.hset("mfa", "alice", b"secret-blob")
        await store.sadd("revoked", "jti-1", "jti-2")
        for i in range(1, 4):
            await store.log_append("audit:acme", b"rec%d" % i)
        await store.log_trim("audit:acme", 1)
    await asyncio.sleep(0.1)
    async with open_store(url) as store:
        assert await store.get("switch") == b"engaged"
        assert await store.get("lockout") == b"1"
        assert await store.get("gone") is None
        assert await store.incr("counter") == 4
        assert await store.hgetall("mfa") == {"alice": b"secret-blob"}
        assert await store.smembers("revoked") == {"jti-1", "jti-2"}
        assert [r async for r in store.log_read("audit:acme")] == [(2, b"rec2"), (3, b"rec3")]
        assert await store.log_append("audit:acme", b"rec4") == 4


async def test_creates_private_directory_and_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state"
    async with open_store(f"local:{path}") as store:
        await store.set("k", b"v")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((path / "state.sqlite3").stat().st_mode) == 0o600


async def test_relative_path_is_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("local:./var/state")
    assert store.kind == "local" and store.shared is False
    async with store:
        await store.ping()
    assert (tmp_path / "var" / "state" / "state.sqlite3").exists()


async def test_corrupt_database_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "state.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable):
        await LocalStore(tmp_path).open()


async def test_unusable_directory_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable):
        await open_store(f"local:{blocker}/state").open()


async def test_closed_store_refuses(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.open()
    sub = await store.subscribe("c")
    await store.close()
    with pytest.raises(StopAsyncIteration):  # closing the store ends its subscriptions
        await anext(sub)
    for call in (lambda: store.get("k"), lambda: store.set("k", b"v"), lambda: store.ping()):
        with pytest.raises(StoreUnavailable):
            await call()
    with pytest.raises(StoreUnavailable):
        await store.publish("c", b"m")


async def test_expired_rows_are_purged_on_open(tmp_path: Path) -> None:
    async with LocalStore(tmp_path) as store:
        await store.set("old", b"v", ttl=0.01)
    await asyncio.sleep(0.05)
    async with LocalStore(tmp_path) as store:
        db = store._conn()
        assert db.execute("SELECT count(*) FROM kv").fetchone() == (0,)


async def test_slow_subscriber_overflow_fails_instead_of_growing(tmp_path: Path) -> None:
    async with LocalStore(tmp_path) as store:
        sub = await store.subscribe("c")
        for _ in range(10_001):
            await store.publish("c", b"m")
        drained = 0
        with pytest.raises(StoreUnavailable):
            while True:
                await anext(sub)
                drained += 1
        assert drained == 10_000
        fresh = await store.subscribe("c")  # resubscribing works
        await store.publish("c", b"after")
        assert await anext(fresh) == ("c", b"after")
