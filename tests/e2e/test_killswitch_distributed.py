"""Kill switches across gateway processes sharing a real Redis: enforced on the other instance
within 1 s (measured and printed), laggards named, the last set enforced while Redis is down,
durability across a restart, and fail-closed start-up before the first load."""

from __future__ import annotations

import asyncio
import base64
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.issuer import DemoIssuer
from tests.e2e.killswitch_helpers import admin, engage, killswitch_config, status_of
from tests.support.gateway_proc import GatewayProc
from tests.support.issuers import operator_and_tenant_issuers
from tests.support.redis_server import RedisServer
from tests.support.upstream import Upstream

Factory = Callable[..., GatewayProc]


@pytest.fixture
def issuers() -> dict[str, DemoIssuer]:
    return operator_and_tenant_issuers()


@pytest.fixture
def env() -> dict[str, str]:
    """Instances sharing a store share the master key (it decrypts the stored signing keys)."""
    return {"SHOPINO_GATEWAY_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}


def redis_config(upstream: Upstream, tmp: Path, issuers: dict[str, DemoIssuer], url: str) -> dict[str, Any]:
    return killswitch_config(upstream.url, tmp, issuers, state={"url": url})


async def ready_body(http: aiohttp.ClientSession, gw: GatewayProc) -> tuple[int, dict[str, Any]]:
    async with http.get(gw.url + "/_gateway/ready") as response:
        return response.status, await response.json(content_type=None)


async def instance_of(http: aiohttp.ClientSession, gw: GatewayProc) -> str:
    async with http.get(gw.url + "/_gateway/health") as response:
        return str((await response.json())["instance"])


async def wait_status(http: aiohttp.ClientSession, url: str, status: int, timeout: float) -> float:
    started = time.monotonic()
    while await status_of(http, url) != status:
        assert time.monotonic() - started < timeout, f"{url} never answered {status}"
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def wait_ready(http: aiohttp.ClientSession, *gateways: GatewayProc, timeout: float = 10) -> None:
    for gw in gateways:
        deadline = time.monotonic() + timeout
        while (await ready_body(http, gw))[0] != 200:
            assert time.monotonic() < deadline, gw.logs()
            await asyncio.sleep(0.05)


async def wait_heartbeats(
    http: aiohttp.ClientSession, gw: GatewayProc, ids: set[str], timeout: float = 10
) -> None:
    """Until ``gw`` lists a heartbeat of every one of ``ids``: only an instance with a heartbeat
    in the store is waited for. (An instance beats when it applies its first load, so this is
    usually at once; a beat lost to a slow store comes a period later.)"""
    deadline = time.monotonic() + timeout
    while True:
        status, listing = await admin(http, gw, "GET", "/admin/killswitch")
        if status == 200 and ids <= {i["instance"] for i in listing["instances"]}:
            return
        assert time.monotonic() < deadline, f"no heartbeat of {ids} within {timeout}s: {listing}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def pair(
    gateway_factory: Factory,
    upstream: Upstream,
    redis_url: str,
    issuers: dict[str, DemoIssuer],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    env: dict[str, str],
) -> tuple[GatewayProc, GatewayProc]:
    """Two ready instances on one Redis."""
    a = gateway_factory(redis_config(upstream, tmp_path, issuers, redis_url), env=env)
    b = gateway_factory(redis_config(upstream, tmp_path, issuers, redis_url), env=env)
    await wait_ready(http, a, b)
    return a, b


async def test_engaged_on_one_enforced_on_the_other_within_a_second(
    pair: tuple[GatewayProc, GatewayProc], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    ids = {await instance_of(http, a), await instance_of(http, b)}
    await wait_heartbeats(http, a, ids)  # both heartbeats in the store: both are live instances
    assert await status_of(http, b.url + "/api/finance/x") == 200
    started = time.monotonic()
    post = asyncio.create_task(engage(http, a, scope="module", target="finance"))
    await wait_status(http, b.url + "/api/finance/x", 503, timeout=1.0)
    enforced = time.monotonic() - started
    switch = await post
    print(
        f"\nengaged on A, enforced on B after {enforced * 1000:.1f} ms (POST answered in "
        f"{(time.monotonic() - started) * 1000:.1f} ms)"
    )
    assert enforced < 1.0
    assert set(switch["acknowledged"]) == ids and switch["lagging"] == []
    status, listing = await admin(http, b, "GET", "/admin/killswitch")
    assert status == 200 and {i["instance"] for i in listing["instances"]} == ids
    assert all(i["version"] == switch["version"] and i["age_s"] < 3 for i in listing["instances"])
    released = await admin(http, b, "DELETE", f"/admin/killswitch/{switch['id']}")
    assert released[0] == 200 and released[1]["lagging"] == []
    assert await status_of(http, a.url + "/api/finance/x") == 200  # acknowledged means enforced


async def test_a_paused_instance_is_named_lagging_after_two_seconds(
    pair: tuple[GatewayProc, GatewayProc], http: aiohttp.ClientSession
) -> None:
    a, b = pair
    paused = await instance_of(http, b)
    await wait_heartbeats(http, a, {paused})  # a live instance, so A waits for its ack
    b.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        switch = await engage(http, a, scope="module", target="orders")
        waited = time.monotonic() - started
    finally:
        b.signal(signal.SIGCONT)
    assert 1.9 <= waited < 3.5
    assert switch["lagging"] == [paused] and paused not in switch["acknowledged"]
    await wait_status(http, b.url + "/api/orders/1", 503, timeout=2.0)  # catches up once resumed


async def test_redis_down_keeps_the_last_switches_and_says_degraded(
    gateway_factory: Factory,
    upstream: Upstream,
    redis_server: RedisServer,
    issuers: dict[str, DemoIssuer],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    gw = gateway_factory(redis_config(upstream, tmp_path, issuers, redis_server.url), env=env)
    await wait_ready(http, gw)
    await engage(http, gw, scope="module", target="finance")
    redis_server.stop()
    deadline = time.monotonic() + 10
    while True:
        status, ready = await ready_body(http, gw)
        if ready.get("killswitch", {}).get("stale"):
            break
        assert time.monotonic() < deadline, ready
        await asyncio.sleep(0.1)
    assert status == 200 and ready["state"] == "degraded" and ready["killswitch"]["version"] >= 1
    assert await status_of(http, gw.url + "/api/finance/x") == 503  # still enforced from memory
    assert await status_of(http, gw.url + "/api/orders/x") == 200
    status, listing = await admin(http, gw, "GET", "/admin/killswitch")  # from memory, marked stale
    assert status == 200 and listing["stale"] is True and len(listing["switches"]) == 1
    while True:
        async with http.get(
            gw.admin_url + "/metrics", headers={"Authorization": "Bearer test-admin-token"}
        ) as r:
            metrics = await r.text()
        if "shopino_gateway_killswitch_stale 1.0" in metrics:
            break
        assert time.monotonic() < deadline + 5, [m for m in metrics.splitlines() if "killswitch" in m]
        await asyncio.sleep(0.1)


async def test_switches_survive_a_restart_in_redis_mode_and_start_up_fails_closed(
    gateway_factory: Factory,
    upstream: Upstream,
    redis_server: RedisServer,
    issuers: dict[str, DemoIssuer],
    http: aiohttp.ClientSession,
    tmp_path: Path,
    env: dict[str, str],
) -> None:
    gw = gateway_factory(redis_config(upstream, tmp_path, issuers, redis_server.url), env=env)
    await wait_ready(http, gw)
    await engage(http, gw, scope="route", target="orders-api")
    gw.stop()
    redis_server.stop()
    gw.start()  # Redis down: up, but nothing is known yet
    assert (await ready_body(http, gw))[0] == 503
    async with http.get(gw.url + "/api/orders/1") as response:
        problem = await response.json(content_type=None)
    assert (
        response.status == 503 and problem["type"] == "urn:shopino-gateway:not-ready"
    )  # never "no switches"
    redis_server.start()
    await wait_ready(http, gw)
    assert await status_of(http, gw.url + "/api/orders/1") == 503  # the switch came back
    assert await status_of(http, gw.url + "/api/finance/1") == 200
