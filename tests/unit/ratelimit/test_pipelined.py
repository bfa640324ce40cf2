"""The one-round-trip paths (the stage script on the RESP connection, and the redis-py pipeline
of limits' scripts that sentinel URLs keep) give exactly what the limits strategies give, and
survive Redis losing its scripts (SCRIPT FLUSH, as after a restart)."""

from __future__ import annotations

import pytest
import redis.asyncio

from gateway.ratelimit.limiter import RateLimitBackend
from tests.unit.ratelimit.conftest import ItemFactory, settings, without_stage_script


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
async def test_fast_pipelined_and_public_paths_agree(
    redis_url: str, items: ItemFactory, strategy: str
) -> None:
    backend = RateLimitBackend(redis_url)
    tight, loose = items("3/minute;5/hour", strategy=strategy)
    try:
        outcomes = {}
        for path in ("fast", "pipelined", "public"):
            if path == "pipelined":
                await without_stage_script(backend)
            if path == "public":
                backend._pipelined = None
            checks = [(tight, backend.hash(path)), (loose, backend.hash(path))]
            verdicts = [await backend.check(checks, settings(), "route") for _ in range(5)]
            outcomes[path] = [(v.allowed, v.item.quota, v.remaining, round(v.reset_in)) for v in verdicts]
        assert outcomes["fast"] == outcomes["pipelined"] == outcomes["public"]
        assert [o[0] for o in outcomes["public"]] == [True, True, True, False, False]
        assert [o[2] for o in outcomes["public"][:3]] == [2, 1, 0]
    finally:
        await backend.close()


@pytest.mark.parametrize("path", ["fast", "pipelined"])
async def test_lost_scripts_are_reloaded_without_double_counting(
    redis_url: str, items: ItemFactory, path: str
) -> None:
    backend = RateLimitBackend(redis_url)
    if path == "pipelined":
        await without_stage_script(backend)
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


async def test_a_stage_is_one_store_command(redis_url: str, items: ItemFactory) -> None:
    backend = RateLimitBackend(redis_url)
    probe = redis.asyncio.Redis.from_url(redis_url)
    value = backend.hash("u")
    checks = [(item, value) for item in items("3/minute;5/hour")]
    checks += [(item, value) for item in items("10/minute", strategy="fixed-window", index=1)]
    try:
        await backend.check(checks, settings(), "route")  # the script is loaded on first use
        await probe.config_resetstat()
        verdict = await backend.check(checks, settings(), "route")
        stats = await probe.info("commandstats")
        assert verdict.allowed and verdict.remaining == 1 and verdict.source == "shared"
        # One EVALSHA for three items and the window state (redis-py's pipeline sent four).
        assert stats["cmdstat_evalsha"]["calls"] == 1
    finally:
        await probe.aclose()
        await backend.close()
