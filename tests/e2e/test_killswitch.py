"""Kill switches through a real gateway (local state): every scope and mode, the 503 problem,
the path-normalisation bypass table, TTL, admin auth, audit, CLI, and the gateway's own
endpoints under a global switch."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from gateway.demo.issuer import DemoIssuer
from tests.e2e import killswitch_helpers as helpers
from tests.e2e.killswitch_helpers import admin, engage, raw_request, status_of
from tests.support.gateway_proc import GatewayProc
from tests.support.issuers import mint

# This module's own gateway and upstream (module-scoped fixtures shared with the in-flight tests).
issuers, upstream, gw, clean = helpers.issuers, helpers.upstream, helpers.gw, helpers.clean


async def test_isolated_answer_is_a_503_problem_with_incident_and_retry_after(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    switch = await engage(http, clean, scope="module", target="finance", incident="INC-42", ttl="1h")
    async with http.get(clean.url + "/_gateway/health") as health:
        instance = (await health.json())["instance"]
    assert switch["acknowledged"] == [instance]
    assert switch["lagging"] == []
    assert {
        "id",
        "scope",
        "target",
        "mode",
        "reason",
        "incident",
        "created_at",
        "expires_at",
        "actor",
        "version",
    } <= set(switch)
    assert switch["actor"] == "admin-token:tests"
    async with http.get(clean.url + "/api/finance/invoices") as response:
        body = await response.json(content_type=None)
        assert response.status == 503
        assert response.headers["Content-Type"] == "application/problem+json"
        assert 3500 <= int(response.headers["Retry-After"]) <= 3600
    assert body["type"] == "urn:shopino-gateway:isolated" and body["incident"] == "INC-42"
    assert "e2e test" not in json.dumps(body)  # the operator's reason is not shown to clients
    assert await status_of(http, clean.url + "/api/orders/1") == 200  # another module is untouched


@pytest.mark.parametrize(
    "body, hit, miss",
    [
        ({"scope": "module", "target": "finance"}, ("POST", "/api/finance/x"), ("POST", "/api/orders/x")),
        ({"scope": "route", "target": "orders-api"}, ("GET", "/api/orders/1"), ("GET", "/api/finance/1")),
        (
            {"scope": "endpoint", "target": "POST /api/finance/invoices/*"},
            ("POST", "/api/finance/invoices/7"),
            ("GET", "/api/finance/invoices/7"),
        ),
        ({"scope": "endpoint", "target": "* /api/**"}, ("DELETE", "/api/orders/a/b"), ("GET", "/other")),
        ({"scope": "global"}, ("GET", "/anything"), ("GET", "/_gateway/ready")),
    ],
)
async def test_identity_free_scopes(
    clean: GatewayProc,
    http: aiohttp.ClientSession,
    body: dict[str, Any],
    hit: tuple[str, str],
    miss: tuple[str, str],
) -> None:
    switch = await engage(http, clean, **body)
    assert await status_of(http, clean.url + hit[1], hit[0]) == 503
    assert await status_of(http, clean.url + miss[1], miss[0]) == 200
    status, _ = await admin(http, clean, "DELETE", f"/admin/killswitch/{switch['id']}")
    assert status == 200
    assert await status_of(http, clean.url + hit[1], hit[0]) != 503  # released: enforced no more


async def test_integration_scope_refuses_before_the_signature_check(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    assert await status_of(http, clean.url + "/hooks/order", "POST", data=b"{}") == 401  # unsigned
    await engage(http, clean, scope="integration", target="woo")
    assert await status_of(http, clean.url + "/hooks/order", "POST", data=b"{}") == 503


async def test_tenant_scope_uses_the_token_tenant(
    clean: GatewayProc, http: aiohttp.ClientSession, issuers: dict[str, DemoIssuer]
) -> None:
    acme = {"Authorization": f"Bearer {mint(issuers['tenant'], 'acme', ['user'])}"}
    beta = {"Authorization": f"Bearer {mint(issuers['tenant'], 'beta', ['user'])}"}
    assert await status_of(http, clean.url + "/api/secure/x", headers=acme) == 200
    await engage(http, clean, scope="tenant", target="acme", incident="INC-T")
    assert await status_of(http, clean.url + "/api/secure/x", headers=acme) == 503
    assert await status_of(http, clean.url + "/api/secure/x", headers=beta) == 200
    assert await status_of(http, clean.url + "/api/secure/x") == 401  # unauthenticated: auth still first


async def test_read_only_mode(clean: GatewayProc, http: aiohttp.ClientSession) -> None:
    await engage(http, clean, scope="module", target="finance", mode="read-only")
    for method in ("GET", "HEAD", "OPTIONS"):
        assert await status_of(http, clean.url + "/api/finance/x", method) == 200
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert await status_of(http, clean.url + "/api/finance/x", method) == 503
    await engage(http, clean, scope="module", target="chat", mode="read-only")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(clean.url + "/ws")
    assert refused.value.status == 503


async def test_global_switch_spares_only_health_and_ready(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    await engage(http, clean, scope="global", incident="INC-G")
    assert await status_of(http, clean.url + "/_gateway/health") == 200
    assert await status_of(http, clean.url + "/_gateway/ready") == 200
    for method, path in [
        ("GET", "/.well-known/jwks.json"),
        ("POST", "/_gateway/mfa/verify"),
        ("GET", "/api/orders/1"),
    ]:
        assert await status_of(http, clean.url + path, method) == 503, path


BYPASSES = [
    "/api/finance/x",
    "/api/finance",
    "/api/finance/",
    "/api/finance/../finance/x",
    "/api/orders/../finance/x",
    "//api//finance",
    "/api/./finance/x",
    "/api/%66inance/x",
    "/api/fin%61nce",
    "/api/%66%69%6e%61%6e%63%65/x",
    "/api/finance;x",
    "/api/finance;/x",
    "/api/finance%3Bx",
    "/api/finance%2Fx",
    "/api/finance%5Cx",
    "/api\\finance/x",
    "/API/finance/x",
    "/api/FINANCE/x",
    "/Api/Finance",
    "/api/%46inance/x",
    "/api/finance%00/x",
    "/api/finance/x/..",
    "/x/../api/finance",
    "/api/finance/%2e%2e/finance/x",
    "/api/%2e/finance/x",
    "http://127.0.0.1/api/finance/x",
]


async def test_no_path_trick_reaches_an_isolated_module(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    await engage(http, clean, scope="module", target="finance")
    proxied = []
    for target in BYPASSES:
        status, body = await raw_request(clean.port, "GET", target)
        # SECURITY: each is refused (503 isolated, or a 400/404 refusal), never proxied.
        if status not in (400, 404, 503) or b'"upstream"' in body:
            proxied.append((target, status))
    assert proxied == []


async def test_ttl_expires_without_a_release(clean: GatewayProc, http: aiohttp.ClientSession) -> None:
    switch = await engage(http, clean, scope="module", target="orders", ttl="1s")
    assert switch["expires_at"] is not None
    async with http.get(clean.url + "/api/orders/1") as response:
        assert response.status == 503 and response.headers["Retry-After"] == "1"
    await asyncio.sleep(1.1)
    assert await status_of(http, clean.url + "/api/orders/1") == 200
    status, listing = await admin(http, clean, "GET", "/admin/killswitch")
    assert status == 200 and listing["switches"] == []


async def test_reason_and_target_validation(clean: GatewayProc, http: aiohttp.ClientSession) -> None:
    for body in [
        {"scope": "module", "target": "finance", "mode": "block"},  # no reason
        {"scope": "module", "target": "finanse", "mode": "block", "reason": "typo"},  # no such module
        {"scope": "global", "target": "finance", "mode": "block", "reason": "r"},
        {"scope": "endpoint", "target": "GET /a/**/b", "mode": "block", "reason": "r"},
        {"scope": "module", "target": "finance", "mode": "block", "reason": "r", "ttl": "forever"},
    ]:
        status, problem = await admin(http, clean, "POST", "/admin/killswitch", body)
        assert status == 400, (body, problem)
    status, _ = await admin(http, clean, "DELETE", "/admin/killswitch/ks_nope")
    assert status == 404


async def test_admin_auth(
    clean: GatewayProc, http: aiohttp.ClientSession, issuers: dict[str, DemoIssuer]
) -> None:
    body = {"scope": "module", "target": "finance", "mode": "block", "reason": "auth test"}
    assert (await admin(http, clean, "POST", "/admin/killswitch", body, token=None))[0] == 401
    assert (await admin(http, clean, "GET", "/admin/killswitch", token="wrong"))[0] == 401
    viewer = mint(issuers["ops"], "shopino-ops", ["viewer"])
    assert (await admin(http, clean, "POST", "/admin/killswitch", body, token=viewer))[0] == 403
    tenant_admin = mint(issuers["tenant"], "acme", ["incident-responder"])  # a tenant's IdP: never
    assert (await admin(http, clean, "POST", "/admin/killswitch", body, token=tenant_admin))[0] == 401
    responder = mint(issuers["ops"], "shopino-ops", ["incident-responder"])
    status, switch = await admin(http, clean, "POST", "/admin/killswitch", body, token=responder)
    assert status == 201 and switch["actor"].startswith("jwt:")
    assert (await admin(http, clean, "DELETE", f"/admin/killswitch/{switch['id']}", token=responder))[
        0
    ] == 200


async def audit_events(http: aiohttp.ClientSession, gw: GatewayProc, tenant: str) -> list[dict[str, Any]]:
    status, records = await admin(http, gw, "GET", f"/admin/audit?tenant={tenant}&format=json")
    assert status == 200
    items = records if isinstance(records, list) else records["records"]
    return [r for r in items if r["event"].startswith("killswitch.")]


async def test_engage_and_release_are_audited_in_the_right_trail(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    switch = await engage(
        http, clean, scope="tenant", target="gamma", incident="INC-A", reason="tenant breach"
    )
    await admin(http, clean, "DELETE", f"/admin/killswitch/{switch['id']}", {"reason": "contained"})
    events = [r for r in await audit_events(http, clean, "gamma") if r["details"]["id"] == switch["id"]]
    assert [r["event"] for r in events] == ["killswitch.engaged", "killswitch.released"]
    engaged, released = events
    assert engaged["actor"] == "admin-token:tests" and engaged["incident"] == "INC-A"
    assert (
        engaged["details"] | {"scope": "tenant", "target": "gamma", "reason": "tenant breach"}
        == engaged["details"]
    )
    assert released["details"]["reason"] == "contained" and released["incident"] == "INC-A"
    in_system = [r for r in await audit_events(http, clean, "_system") if r["details"]["id"] == switch["id"]]
    assert [r["event"] for r in in_system] == ["killswitch.engaged", "killswitch.released"]
    module = await engage(http, clean, scope="module", target="orders", incident="INC-B")
    system = [r for r in await audit_events(http, clean, "_system") if r["details"]["id"] == module["id"]]
    assert system and system[0]["incident"] == "INC-B" and system[0]["details"]["target"] == "orders"


async def test_cli_engage_list_release(clean: GatewayProc) -> None:
    engaged = clean.cli(
        "killswitch",
        "engage",
        "--scope",
        "module",
        "--target",
        "finance",
        "--mode",
        "block",
        "--reason",
        "cli test",
        "--incident",
        "INC-CLI",
        "--ttl",
        "2h",
        "--json",
    )
    assert engaged.returncode == 0, engaged.stderr
    switch = json.loads(engaged.stdout)
    assert switch["incident"] == "INC-CLI" and switch["lagging"] == []
    listing = clean.cli("killswitch", "list")
    assert listing.returncode == 0 and switch["id"] in listing.stdout and "INC-CLI" in listing.stdout
    assert "live instances" in listing.stdout
    released = clean.cli("killswitch", "release", switch["id"], "--reason", "done")
    assert released.returncode == 0 and "released" in released.stdout
    missing = clean.cli("killswitch", "engage", "--scope", "module", "--target", "finance", "--mode", "block")
    assert missing.returncode == 1  # --reason is required by the CLI as well
    unknown = clean.cli("killswitch", "release", "ks_nope")
    assert unknown.returncode == 2


async def test_cli_release_by_incident(clean: GatewayProc, http: aiohttp.ClientSession) -> None:
    """``killswitch release --incident I`` releases every switch of I (each through the audited
    DELETE), leaves other incidents' switches engaged, and a mistyped incident is an error."""
    first = await engage(http, clean, scope="module", target="finance", incident="INC-REL")
    second = await engage(http, clean, scope="module", target="orders", incident="INC-REL")
    other = await engage(http, clean, scope="module", target="secure", incident="INC-OTHER")
    assert await status_of(http, clean.url + "/api/finance/x") == 503
    released = clean.cli("killswitch", "release", "--incident", "INC-REL", "--reason", "contained")
    assert released.returncode == 0, released.stderr
    assert f"released {first['id']}" in released.stdout and f"released {second['id']}" in released.stdout
    _, listing = await admin(http, clean, "GET", "/admin/killswitch")
    assert [s["id"] for s in listing["switches"]] == [other["id"]]
    assert await status_of(http, clean.url + "/api/finance/x") == 200
    assert await status_of(http, clean.url + "/api/orders/x") == 200
    trail = await audit_events(http, clean, "_system")
    reasons = {
        r["details"]["id"]: r["details"].get("reason") for r in trail if r["event"] == "killswitch.released"
    }
    assert reasons[first["id"]] == reasons[second["id"]] == "contained"

    again = clean.cli("killswitch", "release", "--incident", "INC-REL", "--json")
    assert again.returncode == 2 and "no active kill switch of incident INC-REL" in again.stderr
    assert json.loads(again.stdout) == {"incident": "INC-REL", "released": [], "already_gone": []}
    by_json = clean.cli("killswitch", "release", "--incident", "INC-OTHER", "--json")
    assert by_json.returncode == 0
    assert [s["id"] for s in json.loads(by_json.stdout)["released"]] == [other["id"]]
    for usage in (("killswitch", "release"), ("killswitch", "release", other["id"], "--incident", "INC-X")):
        refused = clean.cli(*usage)
        assert refused.returncode == 1 and "either a switch ID or --incident" in refused.stderr
