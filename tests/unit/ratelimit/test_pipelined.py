"""The one-round-trip path gives exactly what the limits strategies give, and survives Redis
losing its scripts (SCRIPT FLUSH, as after a restart)."""

from __future__ import annotations

import pytest
import redis.asyncio

from gateway.ratelimit.limiter import RateLimitBackend
from tests.unit.ratelimit.conftest import ItemFactory, settings


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
async def test_pipelined_and_public_paths_agree(redis_url: str, items: ItemFactory, strategy: str) -> None:
    backend = RateLimitBackend(redis_url)
    tight, loose = items("3/minute;5/hour", strategy=strategy)
    try:
        outcomes = {}
        for path in ("pipelined", "public"):
            if path == "public":
                backend._pipelined = None
            checks = [(tight, backend.hash(path)), (loose, backend.hash(path))]
            verdicts = [await backend.check(checks, settings(), "route") for _ in range(5)]
            outcomes[path] = [(v.allowed, v.item.quota, v.remaining, round(v.reset_in)) for v in verdicts]
        assert outcomes["pipelined"] == outcomes["public"]
        assert [o[0] for o in outcomes["public"]] == [True, True, True, False, False]
        assert [o[2] for o in outcomes["public"][:3]] == [2, 1, 0]
    finally:
        await backend.close()


async def test_lost_scripts_fall_back_to_the_public_api_once(redis_url: str, items: ItemFactory) -> None:
    backend = RateLimitBackend(redis_url)
    checks = [(item, backend.hash("s")) for item in items("10/minute;20/hour")]
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert (await backend.check(checks, settings(), "route")).remaining == 9
        await client.script_flush()
        verdict = await backend.check(checks, settings(), "route")
        assert verdict.allowed and verdict.remaining == 8 and verdict.source == "shared"
        assert not backend.store_down
    finally:
        await client.aclose()
        await backend.close()
