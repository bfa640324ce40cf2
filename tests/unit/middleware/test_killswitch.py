"""SPEC §9: the two kill-switch stages, in their places in ``PIPELINE`` on a real runtime whose
switches are engaged through the real registry (as ``POST /admin/killswitch`` does): a global
switch isolates every route (503 ``isolated``, the incident and Retry-After when given) and
the gateway's own endpoints except health and ready; a tenant switch isolates that tenant
only (its users and anyone acting in it); ``read-only`` lets GET through and refuses writes
and WebSocket upgrades; before the switch set is first loaded, every request is refused
(503 ``not-ready``): fail closed."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.demo.issuer import DemoIssuer
from gateway.killswitch.model import validate_spec
from gateway.middleware.killswitch import check_killswitch, check_tenant_killswitch
from gateway.middleware.tenancy import apply_tenancy
from gateway.pipeline import PIPELINE
from tests.support.stage_server import problem_type
from tests.unit.middleware.conftest import EchoUpstream, Gateway, GatewayFactory, bearer, mint

CONFIG = (
    "routes:\n"
    "  - {name: api, prefix: /api, module: inventory, upstream: erp}\n"
    "  - {name: finance, prefix: /finance, module: finance, upstream: erp}\n"
    "  - {name: public, prefix: /public, upstream: erp, auth: none}\n"
)
WS_HANDSHAKE = {"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}


def test_the_stages_run_in_the_pipeline() -> None:
    # The tenant switch needs the acting tenant: after tenancy.
    assert PIPELINE.index(check_killswitch) < PIPELINE.index(apply_tenancy)
    assert PIPELINE.index(apply_tenancy) < PIPELINE.index(check_tenant_killswitch)


@pytest.fixture
async def gw(gateway: GatewayFactory) -> Gateway:
    return await gateway(CONFIG)


async def engage(gw: Gateway, ttl: float | None = None, **spec: Any) -> None:
    registry = gw.runtime.services.killswitches
    await registry.engage(validate_spec({"reason": "test incident", **spec}), ttl=ttl, actor="responder")
    assert await registry.reload()  # applied here now (other instances follow the announcement)


async def assert_isolated(gw: Gateway, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    async with gw.client.request(method, path, **kwargs) as response:
        assert response.status == 503
        problem: dict[str, Any] = await response.json()
        assert problem["type"] == problem_type("isolated")
        return problem


async def test_no_switch_lets_requests_through(gw: Gateway, issuer: DemoIssuer) -> None:
    async with gw.client.get("/api/items", headers=bearer(mint(issuer, "acme", ["clerk"]))) as response:
        assert response.status == 200


async def test_a_global_switch_isolates_every_route(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    await engage(gw, scope="global", incident="INC-7", ttl=120)
    token = mint(issuer, "acme", ["clerk"])
    problem = await assert_isolated(gw, "GET", "/api/items", headers=bearer(token))
    assert problem["incident"] == "INC-7"
    await assert_isolated(gw, "GET", "/public/catalogue")  # before any authentication
    await assert_isolated(gw, "GET", "/api/items", headers=bearer("not.a.token"))
    async with gw.client.get("/public/catalogue") as response:
        assert 1 <= int(response.headers["Retry-After"]) <= 120
    assert echo_upstream.seen == []


async def test_a_global_switch_spares_only_health_and_ready(gw: Gateway) -> None:
    status = gw.runtime.status  # what the store watcher of a started process sets
    status.snapshot_loaded = status.store_healthy = True
    await engage(gw, scope="global")
    async with gw.client.get("/_gateway/health") as response:
        assert response.status == 200
    async with gw.client.get("/_gateway/ready") as response:
        assert response.status == 200
    await assert_isolated(gw, "GET", "/.well-known/jwks.json")
    await assert_isolated(gw, "POST", "/_gateway/mfa/verify", json={"code": "123456"})


async def test_a_tenant_switch_isolates_that_tenant_only(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    await engage(gw, scope="tenant", target="acme")
    await assert_isolated(gw, "GET", "/api/items", headers=bearer(mint(issuer, "acme", ["clerk"])))
    async with gw.client.get("/api/items", headers=bearer(mint(issuer, "globex", ["clerk"]))) as response:
        assert response.status == 200
    # A client naming the isolated tenant in a header does not reach it, nor get isolated for it.
    spoof = {**bearer(mint(issuer, "globex", ["clerk"])), "X-Tenant-ID": "acme"}
    async with gw.client.get("/api/items", headers=spoof) as response:
        assert response.status == 200
    assert [dict(headers)["X-Tenant-ID"] for _, _, headers, _ in echo_upstream.seen] == ["globex", "globex"]


async def test_read_only_lets_reads_through_and_refuses_writes(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    await engage(gw, scope="module", target="inventory", mode="read-only")
    headers = bearer(mint(issuer, "acme", ["clerk"]))
    for method in ("GET", "HEAD", "OPTIONS"):
        async with gw.client.request(method, "/api/items", headers=headers) as response:
            assert response.status == 200
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        await assert_isolated(gw, method, "/api/items", headers=headers, data=b"{}")
    upgrade = {**headers, "Connection": "Upgrade", "Upgrade": "websocket", **WS_HANDSHAKE}
    await assert_isolated(gw, "GET", "/api/items", headers=upgrade)
    # Another module is not covered.
    async with gw.client.post("/finance/ledger", headers=headers, data=b"{}") as response:
        assert response.status == 200
    assert [method for method, _, _, _ in echo_upstream.seen] == ["GET", "HEAD", "OPTIONS", "POST"]


async def test_a_tenant_read_only_switch_refuses_that_tenants_writes(gw: Gateway, issuer: DemoIssuer) -> None:
    await engage(gw, scope="tenant", target="acme", mode="read-only")
    headers = bearer(mint(issuer, "acme", ["clerk"]))
    async with gw.client.get("/api/items", headers=headers) as response:
        assert response.status == 200
    await assert_isolated(gw, "POST", "/api/items", headers=headers, data=b"{}")


async def test_before_the_switch_set_is_loaded_every_request_is_refused(
    gateway: GatewayFactory, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    gw = await gateway(CONFIG, unloaded=("killswitches",))
    for path, headers in (("/public/catalogue", {}), ("/api/items", bearer(mint(issuer, "acme", ["clerk"])))):
        async with gw.client.get(path, headers=headers) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert (await response.json())["type"] == problem_type("not-ready")
    assert echo_upstream.seen == []
