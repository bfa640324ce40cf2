"""Kill switches and what is already in flight: streaming responses and WebSockets cut when a
switch engages, a request waiting for its upstream refused, and switches surviving a restart
(local state)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from gateway.demo.issuer import DemoIssuer
from tests.e2e import killswitch_helpers as helpers
from tests.e2e.killswitch_helpers import admin, engage, killswitch_config, status_of
from tests.support.gateway_proc import GatewayProc
from tests.support.upstream import Upstream

# This module's own gateway and upstream (module-scoped fixtures shared with the scope tests).
issuers, upstream, gw, clean = helpers.issuers, helpers.upstream, helpers.gw, helpers.clean


async def test_streaming_response_is_cut_when_a_switch_engages(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    total = 2 * 1024**3
    received = 0
    async with http.get(clean.url + f"/stream?bytes={total}") as response:
        assert response.status == 200
        received += len(await response.content.readexactly(64 * 1024))
        started = time.monotonic()
        await engage(http, clean, scope="module", target="downloads", reason="exfiltration")
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError)):
            while chunk := await response.content.read(1024 * 1024):
                received += len(chunk)
    assert received < total
    print(f"stream cut {time.monotonic() - started:.3f}s after the POST, after {received} bytes")
    assert await status_of(http, clean.url + "/stream?bytes=10") == 503


async def test_websocket_is_cut_when_a_switch_engages(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    async with aiohttp.ClientSession() as client, client.ws_connect(clean.url + "/ws") as socket:
        await socket.send_str("hi")
        assert (await socket.receive(timeout=5)).data == "echo:hi"
        await engage(http, clean, scope="module", target="chat", reason="socket abuse")
        message = await socket.receive(timeout=5)
        assert message.type in (
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.ERROR,
        )


async def test_switches_survive_a_restart_in_local_mode(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: Upstream,
    issuers: dict[str, DemoIssuer],
    http: aiohttp.ClientSession,
) -> None:
    tmp = tmp_path_factory.mktemp("restart-local")
    proc = GatewayProc(tmp, killswitch_config(upstream.url, tmp, issuers)).start()
    try:
        await engage(http, proc, scope="module", target="finance")
        proc.stop()
        proc.start()
        assert await status_of(http, proc.url + "/api/finance/x") == 503
        status, listing = await admin(http, proc, "GET", "/admin/killswitch")
        assert status == 200 and len(listing["switches"]) == 1
        async with http.get(proc.url + "/_gateway/ready") as response:
            ready = await response.json()
        assert ready["killswitch"]["version"] >= 1 and ready["killswitch"]["stale"] is False
    finally:
        proc.stop()


async def test_a_request_waiting_for_its_upstream_is_refused_when_a_switch_engages(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    # It passed the switches before the engagement; its answer must still not go out.
    slow = asyncio.create_task(status_of(http, clean.url + "/slow?seconds=1"))
    await asyncio.sleep(0.3)
    await engage(http, clean, scope="endpoint", target="GET /slow")
    assert await slow == 503
