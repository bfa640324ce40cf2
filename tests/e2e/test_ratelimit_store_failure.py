"""SPEC §8 on_store_failure through real gateways on a private Redis: stopped mid-run (local
limits take over at once, shared again after restart) and hung by SIGSTOP (no request waits
out a timeout; ``deny`` answers 503 store-unavailable)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import aiohttp

from tests.e2e.ratelimit_support import DEPLOYMENT_ENV, limits_config, ready, send
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.redis_server import RedisServer
from tests.support.upstream import Upstream


def _config(upstream: Upstream, tmp: Path, redis_url: str, mode: str) -> dict:
    policies = {"p": [{"key": "route", "limit": "5/minute"}]}
    routes = [{"name": "limited", "prefix": "/", "auth": "none", "rate_limit": ["p"]}]
    return limits_config(
        upstream.url, tmp, {"on_store_failure": mode, "policies": policies}, routes, state={"url": redis_url}
    )


def _metric(gw: GatewayProc, prefix: str) -> float:
    request = urllib.request.Request(
        f"{gw.admin_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
    raise AssertionError(f"metric {prefix} missing")


def _store_up(gw: GatewayProc) -> float:
    return _metric(gw, "shopino_gateway_ratelimit_store_up")


async def _timed(http: aiohttp.ClientSession, url: str) -> tuple[int, float, bytes]:
    started = time.monotonic()
    status, _, body = await send(http, url)
    return status, time.monotonic() - started, body


async def test_redis_stopped_mid_run_local_limits_take_over_then_shared_again(
    tmp_path: Path,
    upstream: Upstream,
    redis_server: RedisServer,
    gateway_factory,
    http: aiohttp.ClientSession,
) -> None:
    gw = ready(gateway_factory(_config(upstream, tmp_path, redis_server.url, "local")))
    assert [(await send(http, f"{gw.url}/x"))[0] for _ in range(2)] == [200, 200]  # 2 of 5, in Redis
    redis_server.stop()
    local = [await _timed(http, f"{gw.url}/x") for _ in range(7)]
    assert [s for s, _, _ in local] == [200] * 5 + [429] * 2  # per-process limits, counted afresh
    assert max(t for _, t, _ in local) < 1.0
    assert _store_up(gw) == 0
    decisions = "shopino_gateway_ratelimit_decisions_total{"
    assert _metric(gw, decisions + 'result="fallback",stage="route"}') == 7
    assert _metric(gw, decisions + 'result="ok",stage="route"}') == 2
    assert "ratelimit_store_unavailable" in gw.logs()
    assert gw.logs().count("ratelimit_store_unavailable") == 1  # warned once

    redis_server.start()  # append-only: the 2 hits from before the outage are still there
    deadline = time.monotonic() + 10
    while _store_up(gw) != 1:
        assert time.monotonic() < deadline, gw.logs()
        await asyncio.sleep(0.2)
    assert [(await send(http, f"{gw.url}/x"))[0] for _ in range(4)] == [200, 200, 200, 429]


async def test_hung_redis_never_holds_a_request_and_deny_answers_503(
    tmp_path: Path,
    upstream: Upstream,
    redis_server: RedisServer,
    gateway_factory,
    http: aiohttp.ClientSession,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    local = ready(
        gateway_factory(_config(upstream, tmp_path / "a", redis_server.url, "local"), env=DEPLOYMENT_ENV)
    )
    deny = ready(
        gateway_factory(_config(upstream, tmp_path / "b", redis_server.url, "deny"), env=DEPLOYMENT_ENV)
    )
    assert (await send(http, f"{deny.url}/x"))[0] == 200
    redis_server.pause()
    try:
        results = await asyncio.gather(
            *(_timed(http, f"{gw.url}/x") for gw in (local, deny) for _ in range(5))
        )
        slowest = max(t for _, t, _ in results)
        print(f"\nhung redis: slowest answer {slowest * 1000:.0f} ms")
        assert slowest < 1.0
        assert [s for s, _, _ in results[:5]] == [200] * 5
        assert [s for s, _, _ in results[5:]] == [503] * 5
        assert json.loads(results[5][2])["type"] == "urn:shopino-gateway:store-unavailable"
    finally:
        redis_server.resume()
    deadline = time.monotonic() + 10
    while (await send(http, f"{deny.url}/x"))[0] != 200:
        assert time.monotonic() < deadline, deny.logs()
        await asyncio.sleep(0.2)
