"""The demo ERP with context keys (what ``shopino-gateway demo`` runs): it acts only on requests
whose signed ``X-Gateway-Context`` verifies, and refuses unsigned (401) or forged (403) ones."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.demo.backend import make_backend_app
from gateway.demo.identities import DemoUser, default_users
from gateway.demo.issuer import DemoIssuer
from gateway.tenancy import sign_context

KEY, OLD_KEY = "demo-context-key", "previous-key"
Client = TestClient[web.Request, web.Application]


@pytest.fixture(scope="module")
def users() -> tuple[DemoUser, ...]:
    return default_users()


@pytest.fixture
async def client(aiohttp_client: Any, users: tuple[DemoUser, ...]) -> Client:
    app = make_backend_app(DemoIssuer(), users, context_keys=[KEY, OLD_KEY])
    return await aiohttp_client(app)


def signed(method: str, target: str, tenant: str = "acme", key: str = KEY, rid: str = "r1") -> dict[str, str]:
    return {
        "X-Tenant-ID": tenant,
        "X-User-ID": "alice",
        "X-User-Roles": "finance",
        "X-Request-ID": rid,
        "X-Gateway-Context": sign_context(key, method, target, tenant, "alice", ("finance",), rid),
    }


async def test_signed_request_is_served_for_its_tenant(client: Client) -> None:
    response = await client.get("/api/customers", headers=signed("GET", "/api/customers"))
    assert response.status == 200 and response.headers["X-Tenant-ID"] == "acme"
    assert {r["tenant"] for r in (await response.json())["items"]} == {"acme"}
    old = await client.get("/api/customers", headers=signed("GET", "/api/customers", key=OLD_KEY))
    assert old.status == 200  # the previous key during a rotation


async def test_unsigned_request_is_refused(client: Client) -> None:
    response = await client.get("/api/customers", headers={"X-Tenant-ID": "globex"})
    assert response.status == 401 and (await response.json())["error"] == "missing_context"
    assert "X-Tenant-ID" not in response.headers


async def test_forged_request_is_refused(client: Client) -> None:
    headers = signed("GET", "/api/customers")
    headers["X-Tenant-ID"] = "globex"  # a neighbour re-using a captured context for another tenant
    response = await client.get("/api/customers", headers=headers)
    assert response.status == 403 and (await response.json())["error"] == "invalid_context"
    wrong_key = await client.get("/api/customers", headers=signed("GET", "/api/customers", key="guess"))
    assert wrong_key.status == 403
    other_target = await client.get("/api/finance/invoices", headers=signed("GET", "/api/customers"))
    assert other_target.status == 403


async def test_replayed_unsafe_request_is_refused(client: Client) -> None:
    headers = signed("POST", "/api/customers", rid="post-1")
    first = await client.post("/api/customers", json={"name": "Zainab"}, headers=headers)
    assert first.status == 201 and (await first.json())["created_by"] == "alice"
    replay = await client.post("/api/customers", json={"name": "Zainab"}, headers=headers)
    assert replay.status == 403


async def test_tenant_path_must_match_the_verified_tenant(client: Client) -> None:
    path = "/t/acme/api/inventory/items"
    assert (await client.get(path, headers=signed("GET", path))).status == 200
    other = "/t/globex/api/inventory/items"
    assert (await client.get(other, headers=signed("GET", other))).status == 403
