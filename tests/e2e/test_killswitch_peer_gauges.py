"""``shopino_gateway_killswitch_instances{state}`` from real gateways sharing a real Redis: a
crashed instance cannot be scraped, so its peer reports it ``silent`` (the ShopinoGateway
InstanceSilent alert in deploy/prometheus/ reads this); a graceful stop is not silence."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import standard_config
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.upstream import Upstream


async def _states(http: aiohttp.ClientSession, gw: GatewayProc) -> dict[str, float]:
    async with http.get(f"{gw.admin_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        text = await r.text()
    return {
        s.labels["state"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "shopino_gateway_killswitch_instances"
    }


async def _until(
    http: aiohttp.ClientSession, gw: GatewayProc, wanted: dict[str, float], timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while (states := await _states(http, gw)) != wanted:
        assert time.monotonic() < deadline, f"{states} != {wanted}"
        await asyncio.sleep(0.25)


async def test_a_crashed_peer_is_reported_silent_and_a_stopped_one_is_not(
    tmp_path: Path, upstream: Upstream, redis_url: str, gateway_factory, http: aiohttp.ClientSession
) -> None:
    a, b, c = (
        gateway_factory({**standard_config(upstream.url), "state": {"url": redis_url}}) for _ in range(3)
    )
    await _until(http, a, {"enforcing": 3, "lagging": 0, "silent": 0})
    assert c.stop() == 0  # graceful: its heartbeat leaves with it
    b.signal(signal.SIGKILL)  # a crash: the heartbeat stays and ages
    await _until(http, a, {"enforcing": 1, "lagging": 0, "silent": 1})
