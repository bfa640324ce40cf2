"""Helpers shared by the kill switch end-to-end tests: the config, fixtures (a module's own
gateway and upstream; import them into the test module), admin calls, raw requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.issuers import OPS, issuer_entries, operator_and_tenant_issuers
from tests.support.upstream import Upstream

WEBHOOK_SECRET = "kill-switch-test-webhook-secret-0123456789"


def killswitch_config(
    upstream_url: str, tmp: Path, issuers: dict[str, DemoIssuer], **extra: Any
) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [
        {"name": "open", "prefix": "/", "upstream": "app", "auth": "none"},
        {
            "name": "finance-api",
            "prefix": "/api/finance",
            "upstream": "app",
            "auth": "none",
            "module": "finance",
        },
        {
            "name": "orders-api",
            "prefix": "/api/orders",
            "upstream": "app",
            "auth": "none",
            "module": "orders",
        },
        {"name": "secure", "prefix": "/api/secure", "upstream": "app", "mfa": False, "module": "secure"},
        {"name": "downloads", "prefix": "/stream", "upstream": "app", "auth": "none", "module": "downloads"},
        {"name": "chat", "prefix": "/ws", "upstream": "app", "auth": "none", "module": "chat"},
        {"name": "hooks", "prefix": "/hooks", "upstream": "app", "auth": "webhook", "integration": "woo"},
    ]
    return {
        "listen": {"tls": "off"},
        "routes_case_insensitive": True,
        "upstreams": {"app": {"urls": [upstream_url], "connect_timeout": "1s", "read_timeout": "5s"}},
        "routes": routes,
        "integrations": {"woo": {"scheme": "woocommerce", "secret": WEBHOOK_SECRET}},
        "auth": {"issuers": issuer_entries(issuers, tmp)},
        "admin": {"jwt_issuers": [OPS]},
        "killswitch": {"resync": "1s"},
        **extra,
    }


async def admin(
    http: aiohttp.ClientSession,
    gw: GatewayProc,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = ADMIN_TOKEN,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, gw.admin_url + path, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def engage(http: aiohttp.ClientSession, gw: GatewayProc, **body: Any) -> dict[str, Any]:
    body.setdefault("mode", "block")
    body.setdefault("reason", "e2e test")
    status, data = await admin(http, gw, "POST", "/admin/killswitch", body)
    assert status == 201, data
    return data


@asynccontextmanager
async def engaged(http: aiohttp.ClientSession, gw: GatewayProc, **body: Any) -> AsyncIterator[dict[str, Any]]:
    """A switch (see ``engage``) for the block, released after it."""
    switch = await engage(http, gw, **body)
    try:
        yield switch
    finally:
        status, data = await admin(
            http, gw, "DELETE", f"/admin/killswitch/{switch['id']}", {"reason": "done"}
        )
        assert status == 200, data


async def release_all(http: aiohttp.ClientSession, gw: GatewayProc) -> None:
    status, data = await admin(http, gw, "GET", "/admin/killswitch")
    assert status == 200, data
    for switch in data["switches"]:
        status, _ = await admin(
            http, gw, "DELETE", f"/admin/killswitch/{switch['id']}", {"reason": "cleanup"}
        )
        assert status == 200


async def raw_request(
    port: int, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request with the target sent byte for byte (no client-side normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture(scope="module")
def issuers() -> dict[str, DemoIssuer]:
    return operator_and_tenant_issuers()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream("erp").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, issuers: dict[str, DemoIssuer]
) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("killswitch")
    proc = GatewayProc(tmp, killswitch_config(upstream.url, tmp, issuers)).start()
    yield proc
    proc.stop()


@pytest.fixture
async def clean(gw: GatewayProc, http: aiohttp.ClientSession) -> AsyncIterator[GatewayProc]:
    await release_all(http, gw)
    yield gw
    await release_all(http, gw)


async def status_of(http: aiohttp.ClientSession, url: str, method: str = "GET", **kwargs: Any) -> int:
    async with http.request(method, url, **kwargs) as response:
        await response.read()
        return response.status
