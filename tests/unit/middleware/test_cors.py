"""Appendix B "CORS": the CORS stage on a loopback server after the route stage, as in the
pipeline: a preflight is answered there (204) before authentication, and an origin that is not
allowed is refused by omission (no CORS header at all, so the browser refuses on its own) — the
stage never answers 4xx. The origin rules themselves are tested in tests/unit/test_origins.py."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.middleware.cors import apply_cors
from gateway.middleware.route import resolve_route
from tests.support.stage_server import AiohttpClient, stage_client

APP = "https://app.shopino.example"
EVIL = "https://evil.example"
CONFIG = (
    "routes:\n"
    "  - {name: api, prefix: /api, upstream: erp, cors: web}\n"
    "  - {name: plain, prefix: /plain, upstream: erp}\n"
    "cors:\n"
    f"  web: {{origins: [{APP}], methods: [GET, POST], headers: [Authorization, Content-Type],\n"
    "        expose_headers: [X-Request-ID], credentials: true, max_age: 10m}\n"
)
CORS_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Allow-Credentials",
    "Access-Control-Max-Age",
    "Access-Control-Expose-Headers",
)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient[Any, Any]:
    return await stage_client(aiohttp_client, CONFIG, resolve_route, apply_cors)


def preflight(origin: str, method: str = "POST", requested: str = "Authorization") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": requested,
    }


async def test_a_preflight_from_an_allowed_origin_is_answered_before_authentication(
    client: TestClient[Any, Any],
) -> None:
    async with client.options("/api/orders", headers=preflight(APP)) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert response.headers["Access-Control-Allow-Methods"] == "GET, POST"
        assert response.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert response.headers["Access-Control-Max-Age"] == "600"
        assert response.headers["Vary"] == "Origin"


@pytest.mark.parametrize(
    "headers",
    [
        preflight(EVIL),
        preflight("null"),
        preflight(APP, method="DELETE"),
        preflight(APP, requested="X-Tenant-ID"),
    ],
    ids=["unlisted-origin", "null-origin", "method-not-allowed", "header-not-allowed"],
)
async def test_a_preflight_not_allowed_is_answered_without_any_cors_header(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    async with client.options("/api/orders", headers=headers) as response:
        assert response.status == 204
        assert not [name for name in CORS_HEADERS if name in response.headers]
        assert response.headers["Vary"] == "Origin"


async def test_a_request_from_an_allowed_origin_passes_with_its_cors_headers(
    client: TestClient[Any, Any],
) -> None:
    async with client.get("/api/orders", headers={"Origin": APP}) as response:
        assert response.status == 200
        assert (await response.json())["route"] == "api"
        assert response.headers["Access-Control-Allow-Origin"] == APP
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert response.headers["Access-Control-Expose-Headers"] == "X-Request-ID"
        assert response.headers["Vary"] == "Origin"


async def test_a_request_from_another_origin_passes_without_cors_headers(
    client: TestClient[Any, Any],
) -> None:
    # The browser, not the gateway, withholds the answer from the other site's script.
    async with client.get("/api/orders", headers={"Origin": EVIL}) as response:
        assert response.status == 200
        assert not [name for name in CORS_HEADERS if name in response.headers]
        assert response.headers["Vary"] == "Origin"


async def test_a_route_without_a_policy_leaves_even_preflights_to_the_next_stages(
    client: TestClient[Any, Any],
) -> None:
    async with client.options("/plain/orders", headers=preflight(APP)) as response:
        assert response.status == 200  # not answered here: authentication comes next
        assert (await response.json())["route"] == "plain"
        assert not [name for name in CORS_HEADERS if name in response.headers]
        assert "Vary" not in response.headers
