"""SPEC §2, §11, §12, §14 through the real CLI: reload, drain, workers, admin API, readiness."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import yaml

from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.redis_server import RedisServer
from tests.support.timing import eventually
from tests.support.upstream import Upstream

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def routes_config(upstream: Upstream, prefix: str = "/") -> dict:
    return {
        "upstreams": {"app": {"urls": [upstream.url], "read_timeout": "10s"}},
        "routes": [{"name": "open", "prefix": prefix, "upstream": "app", "auth": "none"}],
        "listen": {"drain_timeout": "10s"},
    }


async def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_sighup_reload_keeps_in_flight_request_and_applies_new_routes(
    gateway_factory, upstream
) -> None:
    gw: GatewayProc = gateway_factory(routes_config(upstream))
    async with aiohttp.ClientSession() as http:
        slow = asyncio.create_task(http.get(f"{gw.url}/slow?seconds=2"))
        await eventually(lambda: upstream.sleeping == 1, timeout=10)  # in flight before the reload
        new = routes_config(upstream, prefix="/v2")
        new["admin"], new["state"], new["listen"] = (
            gw.config["admin"],
            gw.config["state"],
            gw.config["listen"],
        )
        gw.write_config(new)
        gw.signal(signal.SIGHUP)

        async def moved() -> bool:
            async with http.get(f"{gw.url}/echo") as r:
                return r.status == 404

        await wait_until(moved)
        response = await slow
        assert response.status == 200
        assert (await response.json())["slept"] is True
        async with http.get(f"{gw.url}/v2/echo") as r:
            assert r.status == 200


async def test_invalid_reload_is_rejected_and_old_config_keeps_serving(gateway_factory, upstream) -> None:
    gw: GatewayProc = gateway_factory(routes_config(upstream))
    gw.config_path.write_text("routes: [{name: x, prefix: nope, upstream: missing}]\nbogus: 1\n")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.admin_url}/admin/reload", headers=AUTH) as response:
            assert response.status == 400
            body = await response.json()
        assert "routes[0].prefix: expected an absolute path like /api/finance" in body["errors"]
        assert "bogus: unknown key" in body["errors"]
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        async with http.get(f"{gw.url}/echo") as response:
            assert response.status == 200
    assert gw.proc is not None and gw.proc.poll() is None
    assert "config_reload_rejected" in gw.logs()


async def test_sigterm_drains_in_flight_requests(gateway_factory, upstream) -> None:
    gw: GatewayProc = gateway_factory(routes_config(upstream))
    async with aiohttp.ClientSession() as http:
        slow = asyncio.create_task(http.get(f"{gw.url}/slow?seconds=3"))
        await eventually(lambda: upstream.sleeping == 1, timeout=10)  # in flight before SIGTERM
        gw.signal(signal.SIGTERM)

        async def refused() -> bool:
            try:
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{gw.url}/echo") as r:
                    await r.read()
            except aiohttp.ClientConnectionError:
                return True
            return False

        # Listener closed: new connections are refused while the old request finishes. Polled,
        # not read once after a fixed 0.3 s: the gateway may handle its signal later on a busy host.
        while not await refused():
            assert not slow.done(), "a new connection was still served when the old request ended"
            await asyncio.sleep(0.05)
        assert not slow.done()
        response = await slow
        assert response.status == 200
        assert (await response.json())["slept"] is True
    assert gw.proc is not None and gw.proc.wait(10) == 0


async def test_admin_api_requires_a_valid_token_and_masks_secrets(gateway_factory, upstream) -> None:
    config = routes_config(upstream)
    config["state"] = {"url": "redis://:hunter2-password@127.0.0.1:1/0"}
    gw: GatewayProc = gateway_factory(config, start=False)
    gw.start(wait=False)
    await asyncio.sleep(0)
    async with aiohttp.ClientSession() as http:

        async def up() -> bool:
            try:
                async with http.get(f"{gw.admin_url}/admin/config") as r:
                    return r.status == 401
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(up)
        async with http.get(f"{gw.admin_url}/admin/config", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
            assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        async with http.get(f"{gw.admin_url}/admin/config", headers=AUTH) as r:
            assert r.status == 200
            text = await r.text()
        assert "hunter2-password" not in text
        assert "********" in text
        # No store reachable: not ready (503 problem), but alive.
        async with http.get(f"{gw.url}/_gateway/ready") as r:
            assert r.status == 503
            assert (await r.json())["type"] == "urn:shopino-gateway:not-ready"
        async with http.get(f"{gw.url}/_gateway/health") as r:
            assert r.status == 200


async def test_two_workers_share_port_reload_everywhere_and_sum_metrics(
    gateway_factory, upstream, redis_server: RedisServer
) -> None:
    config = routes_config(upstream)
    config["listen"]["workers"] = 2
    config["state"] = {"url": redis_server.url}
    # A shadow limit over the route (exact across the workers on the shared Redis): the console
    # sums its would-be refusals over the workers too.
    config["rate_limits"] = {"policies": {"watch": [{"key": "route", "limit": "2/minute", "mode": "shadow"}]}}
    config["routes"][0]["rate_limit"] = ["watch"]
    gw: GatewayProc = gateway_factory(config)
    instances: set[str] = set()
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 15
        while len(instances) < 2 and time.monotonic() < deadline:
            # A fresh connection each time so the kernel spreads them over both workers
            # (the second worker may still be starting).
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{gw.url}/_gateway/health") as r:
                instances.add((await r.json())["instance"])
            await asyncio.sleep(0.05)
        assert len(instances) == 2
        for _ in range(10):
            async with http.get(f"{gw.url}/echo") as r:
                assert r.status == 200
        async with http.get(f"{gw.admin_url}/metrics", headers=AUTH) as r:
            metrics = await r.text()
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('shopino_gateway_requests_total{route="open",status="200"}')
        )
        assert total == 10
        # The console's traffic view sums the workers too, whichever worker answers (issue 16).
        async with (
            aiohttp.ClientSession() as fresh,
            fresh.get(f"{gw.admin_url}/admin/traffic", headers=AUTH) as r,
        ):
            traffic = await r.json()
        assert sum(p["routes"].get("open", {}).get("2xx", 0) for p in traffic["points"]) == 10
        assert traffic["shadow_refusals"] == {"watch": 8}

        new = routes_config(upstream, prefix="/moved")
        new["listen"], new["state"], new["admin"] = config["listen"], config["state"], gw.config["admin"]
        gw.write_config(new)
        async with http.post(f"{gw.admin_url}/admin/reload", headers=AUTH) as r:
            assert r.status == 200

        async def everywhere() -> bool:
            for _ in range(12):
                async with aiohttp.ClientSession() as fresh, fresh.get(f"{gw.url}/moved/echo") as r:
                    if r.status != 200:
                        return False
            return True

        await wait_until(everywhere)
    pids = gw.proc.pid if gw.proc else 0
    assert pids and os.path.exists(f"/proc/{pids}")


async def test_store_outage_degrades_ready_without_dropping_traffic(
    gateway_factory, upstream, redis_server: RedisServer
) -> None:
    config = routes_config(upstream)
    config["state"] = {"url": redis_server.url}
    gw: GatewayProc = gateway_factory(config)
    async with aiohttp.ClientSession() as http:

        async def state() -> str:
            async with http.get(f"{gw.url}/_gateway/ready") as r:
                return (await r.json()).get("state", "")

        await wait_until(lambda: _eq(state(), "ready"))
        redis_server.stop()
        await wait_until(lambda: _eq(state(), "degraded"))
        async with http.get(f"{gw.url}/echo") as r:
            assert r.status == 200
        redis_server.start()
        await wait_until(lambda: _eq(state(), "ready"))


async def _eq(coro, expected: str) -> bool:
    return await coro == expected


def test_check_config_reports_every_error_and_masks_secrets(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": "http", "limits": {"header_timeout": "soon"}},
                "routes": [{"name": "a", "prefix": "/a", "upstream": "nowhere", "colour": "red"}],
                "surprise": True,
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    for line in (
        "listen.port: expected an integer",
        "listen.limits.header_timeout: expected a duration",
        "routes[0].colour: unknown key",
        "routes[0].upstream: no upstream named 'nowhere'",
        "surprise: unknown key",
    ):
        assert line in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text(
        yaml.safe_dump(
            {
                "state": {"url": "${SG_TEST_STATE}"},
                "upstreams": {"a": {"urls": ["http://127.0.0.1:1"]}},
                "routes": [{"name": "a", "prefix": "/", "upstream": "a"}],
            }
        )
    )
    env = {**os.environ, "SG_TEST_STATE": "redis://:s3cret-pw@127.0.0.1:6379/0"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "-c", str(good)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stdout
    assert "url: '********'" in result.stdout


def test_operator_verb_exit_codes(gateway_factory, upstream) -> None:
    gw: GatewayProc = gateway_factory(routes_config(upstream))
    base = [sys.executable, "-m", "gateway", "reload", "--admin-url", gw.admin_url]
    ok = subprocess.run(
        base,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SHOPINO_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert ok.returncode == 0, ok.stderr
    assert "generation 2" in ok.stdout
    denied = subprocess.run(
        base,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SHOPINO_GATEWAY_ADMIN_TOKEN": "nope"},
    )
    assert denied.returncode == 2
    gone = subprocess.run([*base[:-1], "http://127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 3
