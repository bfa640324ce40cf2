"""Redis-only behaviour: outages, restarts, hangs, TLS, sentinel, prefixes - against real
redis-server processes. Bounds like "within 3 s" catch hangs; they are not speed tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis

from gateway.state import StoreUnavailable, open_store
from gateway.state.redis import RedisStore
from tests.support.redis_server import PASSWORD, RedisServer


def assert_no_secret(exc: BaseException) -> None:
    """Neither the error nor anything chained to it may carry the password."""
    seen: BaseException | None = exc
    while seen is not None:
        assert PASSWORD not in str(seen)
        assert PASSWORD not in repr(seen)
        seen = seen.__cause__ or seen.__context__


@pytest.fixture
async def private_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_server.url + "?socket_timeout=0.5")
    await store.open()
    yield store
    await store.close()


async def test_stopped_redis_raises_store_unavailable_quickly(
    redis_server: RedisServer, private_store: RedisStore
) -> None:
    await private_store.set("k", b"v")
    redis_server.stop()
    calls = (
        lambda: private_store.get("k"),
        lambda: private_store.set("k", b"w"),
        lambda: private_store.log_append("audit", b"r"),
        lambda: private_store.ping(),
    )
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await call()
        assert time.monotonic() - started < 3
        assert_no_secret(info.value)
        assert info.value.status == 503


async def test_same_store_object_recovers_after_restart(
    redis_server: RedisServer, private_store: RedisStore
) -> None:
    await private_store.set("k", b"v")
    assert await private_store.log_append("audit", b"one") == 1
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        await private_store.get("k")
    redis_server.start()
    # append-only server: data survived, and the pool reconnects on the very next call
    assert await private_store.get("k") == b"v"
    # the Lua script cache was lost with the restart; appending must still work
    assert await private_store.log_append("audit", b"two") == 2


async def test_hung_redis_times_out_within_socket_timeout(
    redis_server: RedisServer, private_store: RedisStore
) -> None:
    await private_store.ping()
    redis_server.pause()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await private_store.get("k")
    assert time.monotonic() - started < 2.0  # socket_timeout is 0.5 s
    assert_no_secret(info.value)
    redis_server.resume()
    await private_store.set("k", b"after")
    assert await private_store.get("k") == b"after"


async def test_open_without_redis_then_redis_appears(redis_server: RedisServer) -> None:
    redis_server.stop()
    async with open_store(redis_server.url) as store:  # start-up without the store works
        with pytest.raises(StoreUnavailable):
            await store.ping()
        redis_server.start()
        await store.ping()


async def test_wrong_password_is_unavailable_without_leaking(redis_url: str) -> None:
    wrong = redis_url.replace(PASSWORD, PASSWORD + "-wrong")
    async with open_store(wrong) as store:
        with pytest.raises(StoreUnavailable) as info:
            await store.get("k")
    assert_no_secret(info.value)
    assert PASSWORD not in store.describe()


async def test_subscription_breaks_on_restart_and_resubscribe_works(
    redis_server: RedisServer, private_store: RedisStore
) -> None:
    sub = await private_store.subscribe("switches")
    redis_server.stop()
    with pytest.raises(StoreUnavailable) as info:
        async with asyncio.timeout(3):
            await anext(sub)
    assert_no_secret(info.value)
    with pytest.raises(StopAsyncIteration):  # a broken subscription is closed for good
        await anext(sub)
    redis_server.start()
    sub = await private_store.subscribe("switches")
    await private_store.publish("switches", b"engaged")
    async with asyncio.timeout(3):
        assert await anext(sub) == ("switches", b"engaged")
    await sub.close()


async def test_prefix_namespaces_keys_and_channels(redis_url: str) -> None:
    async with RedisStore(redis_url, prefix="a:") as a, RedisStore(redis_url, prefix="b:") as b:
        await a.set("k", b"from-a")
        assert await b.get("k") is None
        assert await b.keys("") == []
        sub = await b.subscribe("ch")
        await a.publish("ch", b"not for b")
        await b.publish("ch", b"for b")
        async with asyncio.timeout(3):
            assert await anext(sub) == ("ch", b"for b")
        await sub.close()
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.get("a:k:k") == b"from-a"


async def test_burst_beyond_pool_size_waits_instead_of_failing(redis_url: str) -> None:
    async with open_store(redis_url + "?max_connections=8") as store:
        await store.set("k", b"v")
        results = await asyncio.gather(*(store.get("k") for _ in range(100)), return_exceptions=True)
    assert results == [b"v"] * 100


async def test_closed_store_refuses() -> None:
    store = open_store("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable):
        await store.get("k")


async def test_rediss_verifies_the_server_certificate() -> None:
    server = RedisServer(tls=True).start()
    try:
        async with open_store(server.url) as store:
            await store.set("k", b"tls")
            assert await store.get("k") == b"tls"
        untrusted = server.url.partition("?")[0]  # system CAs do not trust our cert
        async with open_store(untrusted) as store:
            with pytest.raises(StoreUnavailable):
                await store.ping()
    finally:
        server.cleanup()


async def test_sentinel_discovers_the_master(redis_url: str, shared_redis_server: RedisServer) -> None:
    sentinel = RedisServer(sentinel_of=(shared_redis_server.port, "gwmaster")).start()
    try:
        url = f"redis+sentinel://:{PASSWORD}@127.0.0.1:1,127.0.0.1:{sentinel.port}/gwmaster/0"
        async with open_store(url) as store:
            assert store.shared and store.kind == "redis"
            assert PASSWORD not in store.describe()
            await store.set("via-sentinel", b"yes")
            assert await store.get("via-sentinel") == b"yes"
    finally:
        sentinel.cleanup()
