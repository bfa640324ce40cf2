"""The lean RESP connection on a real Redis: commands of one loop iteration share one write,
a dropped connection fails what is pending and reconnects, pending commands are capped, a
command's deadline (store_timeout) is kept without a timer per command, and the handshake (AUTH,
SELECT) follows the URL without ever echoing the password."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio
import uvloop

from gateway.ratelimit.resp import ConnectionLost, Overloaded, ReplyError, RespClient, StoreTimeout
from gateway.state.redis_url import parse_redis_url
from tests.support.redis_server import PASSWORD, RedisServer


async def reads_processed(client: redis.asyncio.Redis) -> int:
    return int((await client.info("stats"))["total_reads_processed"])


async def test_one_loop_iteration_is_one_write(redis_url: str) -> None:
    fast = RespClient(parse_redis_url(redis_url))
    probe = redis.asyncio.Redis.from_url(redis_url)
    try:
        await fast.call("PING")  # connected
        before = await reads_processed(probe)
        replies = await asyncio.gather(*(fast.call("INCR", "coalesced") for _ in range(200)))
        after = await reads_processed(probe)
        assert sorted(replies) == list(range(1, 201))  # each reply reached its own caller
        # 200 commands arrive in one or two reads (plus the INFO command itself), not 200.
        assert after - before <= 3
    finally:
        await fast.close()
        await probe.aclose()


async def test_replies_match_their_commands_in_order(redis_url: str) -> None:
    fast = RespClient(parse_redis_url(redis_url))
    try:
        await fast.call("SET", "a", "1")
        results = await asyncio.gather(
            fast.call("GET", "a"),
            fast.call("LPUSH", "a", "x"),
            fast.call("ECHO", "e"),
            return_exceptions=True,
        )
        assert results[0] == b"1" and isinstance(results[1], ReplyError) and results[2] == b"e"
    finally:
        await fast.close()


async def test_a_dropped_connection_fails_pending_and_reconnects(redis_server: RedisServer) -> None:
    fast = RespClient(parse_redis_url(redis_server.url))
    try:
        await fast.call("PING")
        redis_server.pause()
        pending = [asyncio.ensure_future(fast.call("PING")) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in pending)
        fast.abort()  # what the limiter does after a store_timeout
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(result, ConnectionLost) for result in results)
        redis_server.resume()
        assert await fast.call("PING") == b"PONG"  # a fresh connection, lazily
    finally:
        if redis_server.paused:
            redis_server.resume()
        await fast.close()


async def test_submit_awaits_the_reply_future_once_connected(redis_url: str) -> None:
    """Before a connection (or after a loss) ``submit`` connects first; on an open one it hands
    back the reply's future itself (no coroutine per stage call), with the same reply."""
    fast = RespClient(parse_redis_url(redis_url))
    ping = b"*1\r\n$4\r\nPING\r\n"
    try:
        first = fast.submit(ping)
        assert asyncio.iscoroutine(first) and await first == b"PONG"
        pending = fast.submit(ping)
        assert isinstance(pending, asyncio.Future) and await pending == b"PONG"
        fast.abort()
        await asyncio.sleep(0)
        again = fast.submit(ping)
        assert asyncio.iscoroutine(again) and await again == b"PONG"  # reconnected
    finally:
        await fast.close()


async def test_a_hung_redis_fails_every_pending_command_by_the_earliest_deadline(
    redis_server: RedisServer,
) -> None:
    fast = RespClient(parse_redis_url(redis_server.url))
    loop = asyncio.get_running_loop()
    try:
        await fast.call("PING", deadline=loop.time() + 1)
        redis_server.pause()
        started = loop.time()
        # A later deadline first (a reload may shorten store_timeout): the earliest one rules,
        # and whatever waits behind an overdue reply fails with it (Redis answers in order).
        late = asyncio.ensure_future(fast.call("PING", deadline=started + 5))
        soon = [asyncio.ensure_future(fast.call("PING", deadline=started + 0.2)) for _ in range(3)]
        results = await asyncio.wait_for(asyncio.gather(late, *soon, return_exceptions=True), 2)
        elapsed = loop.time() - started
        assert all(isinstance(result, StoreTimeout) for result in results), results
        assert isinstance(results[0], TimeoutError)  # the limiter's breaker sees a timeout
        assert 0.15 < elapsed < 0.5
        # Reconnecting to the hung Redis (its handshake never answers) is bounded too.
        started = time.monotonic()
        with pytest.raises(StoreTimeout):
            await asyncio.wait_for(fast.call("PING", deadline=loop.time() + 0.2), 2)
        assert time.monotonic() - started < 0.5
        redis_server.resume()
        assert await fast.call("PING", deadline=loop.time() + 1) == b"PONG"
    finally:
        if redis_server.paused:
            redis_server.resume()
        await fast.close()


async def test_replies_in_time_keep_the_connection(redis_url: str) -> None:
    fast = RespClient(parse_redis_url(redis_url))
    loop = asyncio.get_running_loop()
    try:
        for n in range(3):  # the deadline watch outlives the replies it watched: it must not fire
            assert await fast.call("ECHO", str(n), deadline=loop.time() + 0.05) == str(n).encode()
            await asyncio.sleep(0.06)
        conn = fast._conn
        assert await fast.call("PING", deadline=loop.time() + 0.05) == b"PONG"
        assert fast._conn is conn and conn is not None and not conn.closed
    finally:
        await fast.close()


async def test_pending_commands_are_capped(redis_server: RedisServer) -> None:
    # SECURITY: memory exhaustion — a Redis that stops reading must not make us buffer forever.
    fast = RespClient(parse_redis_url(redis_server.url), max_pending=3)
    try:
        await fast.call("PING")
        redis_server.pause()
        pending = [asyncio.ensure_future(fast.call("PING")) for _ in range(3)]
        await asyncio.sleep(0.02)
        with pytest.raises(Overloaded):
            async with asyncio.timeout(1):  # without the cap this would wait for the hung Redis
                await fast.call("PING")
        redis_server.resume()
        assert await asyncio.gather(*pending) == [b"PONG"] * 3
    finally:
        if redis_server.paused:
            redis_server.resume()
        await fast.close()


async def test_wrong_password_is_a_store_failure_that_names_no_secret(redis_url: str) -> None:
    wrong = redis_url.replace(PASSWORD, "not-the-password")
    fast = RespClient(parse_redis_url(wrong))
    with pytest.raises(ReplyError) as caught:
        await fast.call("PING")
    assert "not-the-password" not in str(caught.value) and PASSWORD not in str(caught.value)
    await fast.close()


async def test_the_url_database_is_selected(redis_url: str) -> None:
    fast = RespClient(parse_redis_url(redis_url.rsplit("/", 1)[0] + "/3"))
    probe = redis.asyncio.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
    try:
        await fast.call("SET", "in-db-3", "yes")
        assert await probe.get("in-db-3") == b"yes"
    finally:
        await fast.close()
        await probe.aclose()


def test_the_gateway_event_loop_uvloop_is_served(redis_url: str) -> None:
    async def exchange() -> list[bytes]:
        fast = RespClient(parse_redis_url(redis_url))
        try:
            async with asyncio.timeout(2):
                return list(await asyncio.gather(*(fast.call("ECHO", str(n)) for n in range(3))))
        finally:
            await fast.close()

    assert uvloop.run(exchange()) == [b"0", b"1", b"2"]
