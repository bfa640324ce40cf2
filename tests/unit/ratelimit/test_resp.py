"""The lean RESP connection on a real Redis: commands of one loop iteration share one write,
a dropped connection fails what is pending and reconnects, pending commands are capped, and
the handshake (AUTH, SELECT) follows the URL without ever echoing the password."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
import uvloop

from gateway.ratelimit.resp import ConnectionLost, Overloaded, ReplyError, RespClient
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
