"""One conformance suite, run against every backend: local (sqlite in tmp_path) and Redis (a
real redis-server). A feature written against StateStore must behave the same on both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import orjson
import pytest

from gateway.state import StateStore, open_store
from gateway.state.bounded import BoundedStore

T = TypeVar("T")


@pytest.fixture(params=["local", "redis", "bounded-redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    local = f"local:{tmp_path / 'state'}"
    url = local if request.param == "local" else request.getfixturevalue("redis_url")
    async with open_store(url) as opened:
        # The request path's view (every call under store_timeout) must be the same store.
        yield BoundedStore(opened, lambda: 5.0) if request.param == "bounded-redis" else opened


async def test_get_set_delete(store: StateStore) -> None:
    assert await store.get("a") is None
    assert await store.set("a", b"\x00bin\xff") is True
    assert await store.get("a") == b"\x00bin\xff"
    assert await store.set("a", b"two") is True
    assert await store.get("a") == b"two"
    assert await store.delete("a", "missing") == 1
    assert await store.get("a") is None
    assert await store.delete() == 0


async def test_only_if_absent(store: StateStore) -> None:
    assert await store.set("k", b"first", only_if_absent=True) is True
    assert await store.set("k", b"second", only_if_absent=True) is False
    assert await store.get("k") == b"first"


async def within_ttl(ttl: float, steps: Callable[[str], Awaitable[T]], attempts: int = 5) -> tuple[str, T]:
    """``steps(key)`` on a fresh key, until one run took less than ``ttl`` from its start to its
    end (less a margin for the store's own clock); that key and what the run returned. What a
    run finds of a short-lived key says something only if the key cannot have expired meanwhile:
    on a loaded host a stall between a write and the next call may outlast a TTL of 0.2 s."""
    for attempt in range(attempts):
        key = f"short{attempt}"
        started = time.monotonic()
        result = await steps(key)
        if time.monotonic() - started < ttl - 0.02:
            return key, result
    raise AssertionError(f"no run of {attempts} finished within {ttl}s")


async def test_ttl_expires_and_absent_after_expiry(store: StateStore) -> None:
    await store.set("long", b"v", ttl=60)

    async def set_and_get(key: str) -> bytes | None:
        await store.set(key, b"v", ttl=0.15)
        return await store.get(key)

    short, value = await within_ttl(0.15, set_and_get)
    assert value == b"v"
    await asyncio.sleep(0.3)
    assert await store.get(short) is None
    assert await store.get("long") == b"v"
    assert await store.keys("short") == []
    # an expired key is absent for only_if_absent too
    assert await store.set(short, b"again", only_if_absent=True) is True


async def test_set_without_ttl_clears_ttl(store: StateStore) -> None:
    await store.set("k", b"v", ttl=0.15)
    await store.set("k", b"w")
    await asyncio.sleep(0.3)
    assert await store.get("k") == b"w"


async def test_invalid_ttl_rejected(store: StateStore) -> None:
    with pytest.raises(ValueError):
        await store.set("k", b"v", ttl=0)
    with pytest.raises(ValueError):
        await store.incr("k", ttl=-1)


async def test_incr_is_atomic_and_ttl_set_on_create_only(store: StateStore) -> None:
    assert await store.incr("n") == 1
    assert await store.incr("n", 5) == 6
    assert await store.incr("n", -2) == 4
    assert await store.get("n") == b"4"
    results = await asyncio.gather(*(store.incr("c") for _ in range(200)))
    assert sorted(results) == list(range(1, 201))

    async def incr_twice(key: str) -> tuple[int, int]:
        first = await store.incr(key, ttl=0.2)
        await asyncio.sleep(0.1)
        return first, await store.incr(key, ttl=0.2)

    w, counts = await within_ttl(0.2, incr_twice)
    assert counts == (1, 2)  # does not extend the window
    await asyncio.sleep(0.2)
    assert await store.get(w) is None
    assert await store.incr(w, ttl=0.2) == 1


async def test_incr_on_non_integer(store: StateStore) -> None:
    await store.set("text", b"abc")
    with pytest.raises(ValueError):
        await store.incr("text")
    assert await store.get("text") == b"abc"


async def test_hashes(store: StateStore) -> None:
    assert await store.hgetall("h") == {}
    await store.hset("h", "f1", b"one")
    await store.hset("h", "f2", b"two")
    await store.hset("h", "f1", b"uno")
    assert await store.hget("h", "f1") == b"uno"
    assert await store.hget("h", "nope") is None
    assert await store.hgetall("h") == {"f1": b"uno", "f2": b"two"}
    assert await store.hdel("h", "f1", "nope") == 1
    assert await store.hgetall("h") == {"f2": b"two"}
    assert await store.delete("h") == 1
    assert await store.hgetall("h") == {}


async def test_sets(store: StateStore) -> None:
    assert await store.smembers("s") == set()
    assert await store.sadd("s", "a", "b", "a") == 2
    assert await store.sadd("s", "b", "c") == 1
    assert await store.smembers("s") == {"a", "b", "c"}
    assert await store.srem("s", "a", "zz") == 1
    assert await store.smembers("s") == {"b", "c"}
    assert await store.delete("s") == 1


async def test_keys_and_delete_prefix_cover_all_types(store: StateStore) -> None:
    await store.set("tenant:acme:mfa:u1", b"x")
    await store.hset("tenant:acme:grants", "g1", b"y")
    await store.sadd("tenant:acme:codes", "c1")
    await store.set("tenant:acme2:mfa", b"z")
    await store.set("tenant:ACME:mfa", b"case")
    await store.set("tenant:a*:literal", b"glob")
    await store.log_append("tenant:acme:audit", b"rec")
    assert await store.keys("tenant:acme:") == [
        "tenant:acme:codes",
        "tenant:acme:grants",
        "tenant:acme:mfa:u1",
    ]
    assert await store.keys("tenant:a*") == ["tenant:a*:literal"]  # prefix, not a pattern
    assert await store.delete_prefix("tenant:acme:") == 3
    assert await store.keys("tenant:acme:") == []
    assert await store.get("tenant:acme2:mfa") == b"z"
    assert await store.get("tenant:ACME:mfa") == b"case"
    assert await store.log_length("tenant:acme:audit") == 1  # logs are their own namespace
    assert await store.delete_prefix("nothing:") == 0


async def test_log_append_read_and_trim(store: StateStore) -> None:
    assert await store.log_length("audit:t1") == 0
    assert [r async for r in store.log_read("audit:t1")] == []
    for i in range(1, 6):
        assert await store.log_append("audit:t1", b"r%d" % i) == i
    assert await store.log_append("audit:t2", b"other") == 1
    assert [r async for r in store.log_read("audit:t1")] == [(i, b"r%d" % i) for i in range(1, 6)]
    assert [s async for s, _ in store.log_read("audit:t1", start_seq=2, end_seq=4)] == [2, 3, 4]
    assert await store.log_trim("audit:t1", 3) == 3
    assert [s async for s, _ in store.log_read("audit:t1")] == [4, 5]
    assert await store.log_length("audit:t1") == 5
    assert await store.log_append("audit:t1", b"r6") == 6  # numbering continues after a trim
    assert await store.log_trim("audit:t1", 100) == 3
    assert await store.log_append("audit:t1", b"r7") == 7
    assert await store.log_streams("audit:") == ["audit:t1", "audit:t2"]
    assert await store.log_streams("audit:t2") == ["audit:t2"]


async def test_log_append_gapless_under_concurrency(store: StateStore) -> None:
    seqs = await asyncio.gather(*(store.log_append("s", b"%d" % i) for i in range(300)))
    assert sorted(seqs) == list(range(1, 301))
    records = [r async for r in store.log_read("s")]
    assert [s for s, _ in records] == list(range(1, 301))
    # each record sits at the seq its append returned
    assert {int(rec): seq for seq, rec in records} == {i: seqs[i] for i in range(300)}


async def test_log_read_streams_across_batches(store: StateStore) -> None:
    for i in range(1, 1202):
        await store.log_append("big", b"%d" % i)
    count, expected = 0, 1
    async for seq, record in store.log_read("big", start_seq=1):
        assert (seq, record) == (expected, b"%d" % expected)
        expected += 1
        count += 1
    assert count == 1201
    tail = [s async for s, _ in store.log_read("big", start_seq=999, end_seq=1001)]
    assert tail == [999, 1000, 1001]


async def test_pubsub_delivers_to_subscribers_of_that_channel(store: StateStore) -> None:
    sub = await store.subscribe("killswitch", "revocations")
    other = await store.subscribe("keys")
    await store.publish("killswitch", b"changed")
    await store.publish("unrelated", b"nope")
    await store.publish("revocations", b"epoch")
    async with asyncio.timeout(3):
        assert await anext(sub) == ("killswitch", b"changed")
        assert await anext(sub) == ("revocations", b"epoch")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await anext(other)
    await sub.close()
    await other.close()
    with pytest.raises(StopAsyncIteration):
        await anext(sub)


async def test_close_ends_iteration_of_a_waiting_subscriber(store: StateStore) -> None:
    sub = await store.subscribe("c")
    waiter = asyncio.create_task(anext(sub))
    await asyncio.sleep(0.05)
    await sub.close()
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(3):
            await waiter


async def test_ping_describe_and_repr(store: StateStore) -> None:
    await store.ping()
    assert store.kind in ("local", "redis")
    assert store.shared is (store.kind == "redis")
    assert "s3cret" not in store.describe()
    assert "s3cret" not in repr(store)


# -- merge primitives (store reset write-back, SPEC App. C) -------------------------------------
async def test_compare_and_set(store: StateStore) -> None:
    assert await store.compare_and_set("m", None, b"g1") == b"g1"  # absent: written
    assert await store.compare_and_set("m", None, b"g2") == b"g1"  # present: kept, answered
    assert await store.compare_and_set("m", b"other", b"g3") == b"g1"
    assert await store.compare_and_set("m", b"g1", b"g4") == b"g4"
    assert await store.get("m") == b"g4"
    assert await store.compare_and_set("absent", b"g1", b"x") is None  # expected a value: no write
    assert await store.get("absent") is None


async def test_set_max_only_raises(store: StateStore) -> None:
    assert await store.set_max("v", 5) == 5
    assert await store.set_max("v", 3) == 5  # never lowered: an older writer cannot roll back
    assert await store.incr("v") == 6
    assert await store.set_max("v", 9) == 9
    await store.set("text", b"abc")
    with pytest.raises(ValueError):
        await store.set_max("text", 1)


async def test_hash_compare_and_set(store: StateStore) -> None:
    assert await store.hash_compare_and_set("h", "f", None, b"v1") == b"v1"  # absent: written
    assert await store.hash_compare_and_set("h", "f", None, b"v2") == b"v1"  # present: kept
    assert await store.hash_compare_and_set("h", "f", b"other", b"v3") == b"v1"
    assert await store.hash_compare_and_set("h", "f", b"v1", b"v4") == b"v4"
    assert await store.hash_compare_and_set("h", "g", b"v1", b"x") is None  # expected a value
    assert await store.hgetall("h") == {"f": b"v4"}


async def test_set_keep_later_keeps_the_later_expiry(store: StateStore) -> None:
    assert await store.set_keep_later("lock", b"long", 60) is True
    assert await store.set_keep_later("lock", b"short", 0.2) is False  # would shorten it
    await asyncio.sleep(0.3)
    assert await store.get("lock") == b"long"
    await store.set("short", b"a", ttl=0.5)
    assert await store.set_keep_later("short", b"b", 60) is True  # extends an earlier expiry
    assert await store.get("short") == b"b"
    await store.set("forever", b"f")
    assert await store.set_keep_later("forever", b"g", 60) is False  # no expiry outlives all
    assert await store.get("forever") == b"f"


async def test_hash_merge_adds_absent_and_honours_tombstones(store: StateStore) -> None:
    await store.hset("h", "a", b"stored")
    added = await store.hash_merge("h", {"a": b"older", "b": b"new"})
    assert added == 1
    assert await store.hgetall("h") == {"a": b"stored", "b": b"new"}  # never overwrites
    # A writer that knows "b" was deleted removes it and keeps it from being revived.
    assert await store.hash_merge("h", {}, ["b"]) == 0
    assert await store.hash_merge("h", {"b": b"stale copy", "c": b"c"}) == 1
    assert await store.hgetall("h") == {"a": b"stored", "c": b"c"}
    assert await store.keys("h") == ["h"]  # tombstones live outside the hash's own prefix
    assert await store.hash_merge("h", {}) == 0


def _switch(expires_at: float | None, version: int) -> bytes:
    return orjson.dumps({"id": "s", "expires_at": expires_at, "version": version})


@pytest.mark.parametrize("order", ["forward", "reverse"])
async def test_hash_merge_keep_later_keeps_the_later_expiry_then_the_higher_version(
    store: StateStore, order: str
) -> None:
    """Two writers' copies of the same records, landing in either order: the later expiry
    wins (none beats any), then the higher version; never the earlier expiry."""
    first = {
        "extended": _switch(1000.0, 3),
        "permanent": _switch(None, 2),
        "same-expiry": _switch(500.0, 7),
        "malformed": b"not json",
    }
    second = {
        "extended": _switch(9000.0, 5),  # the extension, at a higher version
        "permanent": _switch(99999.0, 9),  # a higher version but an expiry: permanent still wins
        "same-expiry": _switch(500.0, 4),
        "malformed": _switch(10.0, 1),  # a record that is not one loses to any that is
    }
    writers = [first, second] if order == "forward" else [second, first]
    for entries in writers:
        await store.hash_merge("sw", entries, keep_later=True)
    stored = await store.hgetall("sw")
    assert stored["extended"] == second["extended"]
    assert stored["permanent"] == first["permanent"]
    assert stored["same-expiry"] == first["same-expiry"]
    assert stored["malformed"] == second["malformed"]
    # Nothing changes on a second pass; a tombstone is still never revived.
    assert await store.hash_merge("sw", {**first, **second}, keep_later=True) == 0
    await store.hash_merge("sw", {}, ["extended"])
    assert await store.hash_merge("sw", {"extended": _switch(None, 99)}, keep_later=True) == 0
    assert "extended" not in await store.hgetall("sw")
    # Without keep_later the first copy stays (the plain union of other kinds of state).
    await store.hset("plain", "f", _switch(1.0, 1))
    assert await store.hash_merge("plain", {"f": _switch(None, 2)}) == 0


async def test_concurrent_writers_lose_no_entry(store: StateStore) -> None:
    """Two writers merging different views at once: the union survives, the maximum wins, the
    later expiry wins, and a tombstone beats a stale copy whichever order they land in."""
    first = {f"s{i}": b"1" for i in range(0, 60)}
    second = {f"s{i}": b"2" for i in range(30, 90)}

    async def writer(entries: dict[str, bytes], version: int, lock_ttl: float, removed: list[str]) -> None:
        for _ in range(5):
            await asyncio.gather(
                store.hash_merge("switches", entries, removed),
                store.set_max("version", version),
                store.set_keep_later("lock", b"%d" % version, lock_ttl),
            )

    await asyncio.gather(
        writer(first, 7, 60, []),
        writer(second, 9, 30, ["s1"]),  # the second writer knows s1 was deleted
    )
    merged = await store.hgetall("switches")
    assert set(merged) == {f"s{i}" for i in range(0, 90)} - {"s1"}
    assert await store.get("version") == b"9"
    assert await store.get("lock") == b"7"  # the 60 s lockout outlives the 30 s one
