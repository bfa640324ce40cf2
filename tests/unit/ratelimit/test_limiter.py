"""The limiter on memory and on a real Redis: every strategy, concurrent items, the binding
item's window state, and the failure modes behind the circuit breaker on a hung Redis."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import StoreUnavailable
from gateway.metrics import render_metrics
from gateway.ratelimit.limiter import RateLimitBackend
from gateway.ratelimit.model import STRATEGIES
from tests.support.redis_server import PASSWORD, RedisServer
from tests.unit.ratelimit.conftest import ItemFactory, settings


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_each_strategy_admits_exactly_the_limit(
    backend: RateLimitBackend, items: ItemFactory, strategy: str
) -> None:
    (item,) = items("3/minute", strategy=strategy)
    checks = [(item, backend.hash("203.0.113.1"))]
    if strategy == "sliding-window-counter" and time.time() % 60 > 55:
        # Its windows are whole minutes: three hits before a minute's end weigh just under three
        # an instant after it, and the fourth would pass. Start in the next minute instead.
        await asyncio.sleep(60.05 - time.time() % 60)
    verdicts = [await backend.check(checks, settings(), "route") for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts[:3]] == [2, 1, 0]
    assert 0 < verdicts[3].reset_in <= 60
    other = await backend.check([(item, backend.hash("203.0.113.2"))], settings(), "route")
    assert other.allowed  # another key value, another bucket


async def test_all_items_are_hit_and_the_tightest_binds(
    backend: RateLimitBackend, items: ItemFactory
) -> None:
    loose, tight = items("100/minute;2/second")
    value = backend.hash("alice")
    first = await backend.check([(loose, value), (tight, value)], settings(), "route")
    assert first.allowed and first.item is tight and first.remaining == 1
    await backend.check([(loose, value), (tight, value)], settings(), "route")
    refused = await backend.check([(loose, value), (tight, value)], settings(), "route")
    assert not refused.allowed and refused.item is tight and refused.reset_in <= 1


async def test_cost_counts_several_hits(backend: RateLimitBackend, items: ItemFactory) -> None:
    (item,) = items("5/minute", cost=2)
    checks = [(item, backend.hash("x"))]
    assert [(await backend.check(checks, settings(), "route")).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]


async def test_changed_strategy_never_collides_with_old_keys(redis_url: str, items: ItemFactory) -> None:
    backend = RateLimitBackend(redis_url)
    try:
        value = backend.hash("10.0.0.1")
        (moving,) = items("2/minute", strategy="moving-window")
        (fixed,) = items("2/minute", strategy="fixed-window")
        assert (await backend.check([(moving, value)], settings(), "route")).allowed
        # Same rule, strategy changed by a reload: a fresh key, no WRONGTYPE from Redis.
        verdict = await backend.check([(fixed, value)], settings(), "route")
        assert verdict.allowed and verdict.source == "shared" and verdict.remaining == 1
    finally:
        await backend.close()


@pytest.mark.parametrize("mode", ["local", "allow", "deny"])
async def test_hung_redis_fails_over_fast_and_recovers(
    redis_server: RedisServer, items: ItemFactory, mode: str
) -> None:
    backend = RateLimitBackend(redis_server.url)
    (item,) = items("2/minute")
    checks = [(item, backend.hash("a"))]
    try:
        assert (await backend.check(checks, settings(mode), "route")).source == "shared"
        redis_server.pause()
        outcomes = []
        started = time.monotonic()
        for _ in range(3):
            try:
                outcomes.append(await backend.check(checks, settings(mode), "route"))
            except StoreUnavailable:
                outcomes.append("refused")
        elapsed = time.monotonic() - started
        assert elapsed < 0.6  # one store_timeout (0.3 s) at most, then the breaker is open
        assert backend.store_down
        if mode == "local":
            assert [o.allowed for o in outcomes] == [True, True, False]  # memory counts afresh
        elif mode == "allow":
            assert outcomes == [None, None, None]
        else:
            assert outcomes == ["refused"] * 3
        redis_server.resume()
        deadline = time.monotonic() + 5
        while backend.store_down:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert (await backend.check(checks, settings(mode), "route")).source == "shared"
    finally:
        if redis_server.paused:
            redis_server.resume()
        await backend.close()


async def test_a_full_bucket_is_refused_from_memory_until_its_reset(
    redis_server: RedisServer, items: ItemFactory
) -> None:
    backend = RateLimitBackend(redis_server.url)
    (item,) = items("2/minute", strategy="fixed-window")
    (other,) = items("2/minute", index=1)
    flood, calm = [(item, backend.hash("flood"))], [(other, backend.hash("calm"))]
    try:
        verdicts = [await backend.check(flood, settings(), "route") for _ in range(3)]
        assert [v.allowed for v in verdicts] == [True, True, False]
        redis_server.pause()  # proves the next refusals need no store call
        started = time.monotonic()
        again = await backend.check(flood, settings(), "route")
        assert not again.allowed and again.source == "cache" and 0 < again.reset_in <= 60
        assert time.monotonic() - started < 0.05 and not backend.store_down
        # Another bucket is not affected: it goes to the (hung) store and fails over.
        assert (await backend.check(calm, settings(), "route")).source == "local"
    finally:
        if redis_server.paused:
            redis_server.resume()
        await backend.close()


async def test_sentinel_and_tls_urls_reach_the_shared_store(
    redis_url: str, shared_redis_server: RedisServer, items: ItemFactory
) -> None:
    sentinel = RedisServer(sentinel_of=(shared_redis_server.port, "rlmaster")).start()
    tls = RedisServer(tls=True).start()
    (item,) = items("1/minute")
    try:
        urls = [f"redis+sentinel://:{PASSWORD}@127.0.0.1:{sentinel.port}/rlmaster/0", tls.url]
        for url in urls:
            backend = RateLimitBackend(url)
            try:
                checks = [(item, backend.hash(url))]
                first = await backend.check(checks, settings(timeout=2.0), "route")
                second = await backend.check(checks, settings(timeout=2.0), "route")
                assert (first.allowed, first.source, second.allowed) == (True, "shared", False), url
            finally:
                await backend.close()
    finally:
        sentinel.cleanup()
        tls.cleanup()


async def test_decisions_reach_the_scrape_as_counted(backend: RateLimitBackend, items: ItemFactory) -> None:
    """Decisions are tallied in plain numbers (one process) and published before each scrape:
    /metrics shows every decision, and a scrape with nothing new adds nothing."""
    (item,) = items("2/minute")
    checks = [(item, backend.hash("tally-203.0.113.9"))]

    def scraped(result: str) -> float:
        body = render_metrics()[0].decode()
        line = f'shopino_gateway_ratelimit_decisions_total{{result="{result}",stage="tally"}} '
        found = [row for row in body.splitlines() if row.startswith(line)]
        return float(found[0].removeprefix(line)) if found else 0.0

    ok_before, limited_before = scraped("ok"), scraped("limited")
    for _ in range(3):
        await backend.check(checks, settings(), "tally")
    assert (scraped("ok"), scraped("limited")) == (ok_before + 2, limited_before + 1)
    assert (scraped("ok"), scraped("limited")) == (ok_before + 2, limited_before + 1)
    await backend.check(checks, settings(), "tally")  # refused from memory (the deny cache)
    assert scraped("limited") == limited_before + 2
