"""SPEC Appendix C "client gone, drain once": hang-ups are 499 client-closed, never a 5xx;
drain_timeout bounds the whole drain once, and the requests it cuts are logged."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import urllib.request

import aiohttp

from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.raw_http import connect
from tests.support.timing import eventually, wait_for
from tests.support.upstream import Upstream

DRAIN = 2.0


def gone_config(upstream: Upstream) -> dict:
    return {
        "listen": {"tls": "off", "drain_timeout": f"{DRAIN}s"},
        "upstreams": {"app": {"urls": [upstream.url], "read_timeout": "30s"}},
        "routes": [{"name": "open", "prefix": "/", "upstream": "app", "auth": "none"}],
    }


def wait_for_line(gw: GatewayProc, path: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in gw.access_lines() if line["path"] == path]
        if lines:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.1)
    raise AssertionError(f"no access line for {path}:\n{gw.logs()}")


def metrics(gw: GatewayProc) -> str:
    request = urllib.request.Request(
        f"{gw.admin_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def test_hang_ups_are_499_client_closed_never_5xx(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(gone_config(upstream))
    # Mid-body: 10 of 1000 declared bytes, then the client is gone.
    with connect(gw.port) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        time.sleep(0.3)
    # While the gateway waits for a slow upstream.
    with connect(gw.port) as sock:
        sock.sendall(b"GET /slow?seconds=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: upstream.sleeping == 1, 10)  # the gateway is waiting for it
    for path in ("/sink", "/slow"):
        line = wait_for_line(gw, path)
        assert line["status"] == 499, line
        assert line["reason"] == "client-closed"
    logs = gw.logs()
    assert "request_failed" not in logs and "Traceback" not in logs
    exported = metrics(gw)
    assert 'shopino_gateway_requests_total{route="open",status="499"} 2.0' in exported
    assert 'status="5' not in exported
    assert 'type="internal"' not in exported


async def test_drain_timeout_bounds_the_drain_once_and_logs_the_cut(
    gateway_factory, upstream: Upstream
) -> None:
    gw = gateway_factory(gone_config(upstream))
    async with aiohttp.ClientSession() as http:
        slow = asyncio.create_task(http.get(f"{gw.url}/slow?seconds=6"))
        await eventually(lambda: upstream.sleeping == 1, timeout=10)  # in flight before SIGTERM
        started = time.monotonic()
        gw.signal(signal.SIGTERM)
        assert gw.proc is not None
        while gw.proc.poll() is None and time.monotonic() - started < 15:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        with contextlib.suppress(aiohttp.ClientError):  # the cut request's connection is closed
            await slow
    assert gw.proc.returncode == 0
    # It waited for the in-flight request for drain_timeout, then stopped: once, not twice.
    assert DRAIN * 0.9 <= elapsed < DRAIN + 1.5, elapsed
    line = wait_for_line(gw, "/slow")
    assert line["status"] == 499 and line["reason"] == "drain-timeout", line
