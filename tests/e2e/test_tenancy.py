"""SPEC §7 through the real CLI: spoofed identity headers never reach the upstream, tenant_from
path and host checks (audited), route roles, the signed context, and an upstream answering for
another tenant withheld (502, not one byte, audited, connection not reused)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.demo.issuer import DemoIssuer
from gateway.tenancy import verify_context
from tests.support.gateway_proc import GatewayProc
from tests.support.tenancy import (
    ISS,
    SECRET_BODY,
    TenantUpstream,
    audit_events,
    issuer_config,
    raw_request,
    token,
)

IDENTITY = ("X-Tenant-ID", "X-User-ID", "X-User-Roles", "X-Gateway-Context")
EXTRA_STRIPPED = ("X-Impersonate", "X-Acting-Tenant")


@pytest.fixture(scope="module")
def issuer() -> DemoIssuer:
    return DemoIssuer(issuer=ISS)


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, issuer: DemoIssuer
) -> Iterator[tuple[GatewayProc, TenantUpstream]]:
    upstream = TenantUpstream().start()
    tmp = tmp_path_factory.mktemp("tenancy")
    jwks = issuer.write_jwks(tmp / "idp.jwks.json")
    routes: list[dict[str, Any]] = [
        {"name": "open", "prefix": "/open", "upstream": "app", "auth": "none"},
        {"name": "api", "prefix": "/api", "upstream": "app", "module": "inventory"},
        {"name": "claim", "prefix": "/claim", "upstream": "app"},
        {"name": "fin", "prefix": "/fin", "upstream": "app", "roles": ["finance", "tenant-admin"]},
        {"name": "t", "prefix": "/t", "upstream": "app", "tenant_from": "path:/t/{tenant}/"},
        {"name": "h", "prefix": "/h", "upstream": "app", "tenant_from": "host:{tenant}.erp.example.com"},
        {"name": "echo", "prefix": "/must-echo", "upstream": "app", "require_tenant_echo": True},
    ]
    config = {
        "auth": issuer_config(str(jwks)),
        "tenancy": {"strip_headers": list(EXTRA_STRIPPED)},
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": routes,
    }
    gw = GatewayProc(tmp, config).start()
    yield gw, upstream
    gw.stop()
    upstream.stop()


def _spellings(name: str) -> list[str]:
    return [name, name.lower(), name.upper(), name.swapcase(), "".join(
        c.upper() if i % 2 else c.lower() for i, c in enumerate(name)
    )]  # fmt: skip


def _check_identity(gw: GatewayProc, record: dict[str, Any], tenant: str, user: str, roles: str) -> None:
    """Exactly one of each identity header, the token's values, and a context that verifies."""
    headers = [(k.lower(), v) for k, v in record["headers"]]
    for name in IDENTITY:
        assert [v for k, v in headers if k == name.lower()].__len__() == 1, name
    seen = dict(headers)
    assert (seen["x-tenant-id"], seen["x-user-id"], seen["x-user-roles"]) == (tenant, user, roles)
    for name in EXTRA_STRIPPED:
        assert name.lower() not in seen
    context = verify_context(seen, record["method"], record["path_qs"], gw.context_key)
    assert (context.tenant, context.user, ",".join(context.roles)) == (tenant, user, roles)
    assert context.request_id == seen["x-request-id"]


def test_spoofed_identity_headers_in_every_spelling_are_dropped(setup, issuer: DemoIssuer) -> None:
    gw, _ = setup
    spoofed: list[tuple[str, str]] = []
    for name in (*IDENTITY, *EXTRA_STRIPPED):
        for spelling in _spellings(name):
            spoofed += [(spelling, "globex"), (spelling, "mallory,admin")]
    auth = ("Authorization", f"Bearer {token(issuer, roles=('inventory', 'reports'))}")
    status, _, body = raw_request(gw, "GET", "/api/items?x=1", [auth, *spoofed])
    assert status == 200, body
    _check_identity(gw, json.loads(body), "acme", "alice", "inventory,reports")


def test_underscore_spellings_of_identity_headers_are_dropped(setup, issuer: DemoIssuer) -> None:
    # Regression: "X_Tenant_ID: globex" was forwarded; CGI/WSGI backends read it as HTTP_X_TENANT_ID.
    gw, _ = setup
    names = [*IDENTITY, *EXTRA_STRIPPED]
    spoofed = [(n.replace("-", "_"), "globex") for n in names]
    spoofed += [(n.replace("-", "_", 1), "globex") for n in names]  # mixed: X_Tenant-ID
    auth = ("Authorization", f"Bearer {token(issuer, roles=('inventory',))}")
    status, _, body = raw_request(gw, "GET", "/api/items", [auth, *spoofed])
    assert status == 200, body
    record = json.loads(body)
    folded = [k.lower().replace("_", "-") for k, _ in record["headers"]]
    for name in names:
        assert folded.count(name.lower()) == (1 if name in IDENTITY else 0), name
    _check_identity(gw, record, "acme", "alice", "inventory")


def test_auth_none_routes_get_no_identity_headers(setup) -> None:
    gw, _ = setup
    spoofed = [(s, "globex") for name in (*IDENTITY, *EXTRA_STRIPPED) for s in _spellings(name)]
    status, _, body = raw_request(gw, "GET", "/open/x", spoofed)
    assert status == 200
    names = {k.lower() for k, _ in json.loads(body)["headers"]}
    assert not names & {n.lower() for n in (*IDENTITY, *EXTRA_STRIPPED)}
    assert "x-request-id" in names


async def test_path_tenant_must_be_the_tokens(setup, issuer: DemoIssuer) -> None:
    gw, upstream = setup
    auth = {"Authorization": f"Bearer {token(issuer)}", "X-Request-ID": "mismatch-path-1"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/t/acme/orders", headers=auth) as r:
            assert r.status == 200
            _check_identity(gw, await r.json(), "acme", "alice", "inventory")
        before = len(upstream.requests)
        for path in ("/t/globex/orders", "/t/", "/t/ACME/orders", "/t/.acme/x", "/t"):
            async with http.get(f"{gw.url}{path}", headers=auth) as r:
                assert r.status in (400, 403), path
                if r.status == 403:
                    problem = await r.json()
                    assert problem["type"] == "urn:shopino-gateway:tenant-mismatch", path
        assert len(upstream.requests) == before  # nothing reached the upstream
        for trail in ("acme", "globex"):  # App. B: filed in both tenants' trails
            records = [e for e in await audit_events(http, gw, trail) if e["event"] == "tenant.mismatch"]
            assert any(
                e["request_id"] == "mismatch-path-1" and e["details"]["requested_tenant"] == "globex"
                for e in records
            ), trail


async def test_host_tenant_must_be_the_tokens(setup, issuer: DemoIssuer) -> None:
    gw, _ = setup
    auth = f"Bearer {token(issuer)}"
    status, _, body = raw_request(
        gw, "GET", "/h/x", [("Host", "ACME.erp.example.com:8443"), ("Authorization", auth)]
    )
    assert status == 200
    _check_identity(gw, json.loads(body), "acme", "alice", "inventory")
    for host in ("globex.erp.example.com", "erp.example.com", "acme.erp.example.com.evil.net", "127.0.0.1"):
        headers = [("Host", host), ("Authorization", auth), ("X-Request-ID", "mismatch-host-1")]
        status, _, body = raw_request(gw, "GET", "/h/x", headers)
        assert status == 403, host
        assert json.loads(body)["type"] == "urn:shopino-gateway:tenant-mismatch"
    async with aiohttp.ClientSession() as http:
        records = await audit_events(http, gw, "globex")
    assert any(e["event"] == "tenant.mismatch" and e["request_id"] == "mismatch-host-1" for e in records)


async def test_route_roles_are_any_of(setup, issuer: DemoIssuer) -> None:
    gw, _ = setup
    async with aiohttp.ClientSession() as http:
        for roles, expected in (
            (("inventory",), 403),
            (("finance",), 200),
            (("x", "tenant-admin"), 200),
            ((), 403),
        ):
            headers = {"Authorization": f"Bearer {token(issuer, roles=roles)}"}
            async with http.get(f"{gw.url}/fin/x", headers=headers) as r:
                assert r.status == expected, roles
                if expected == 403:
                    assert (await r.json())["type"] == "urn:shopino-gateway:forbidden"


async def test_upstream_answering_for_another_tenant_is_withheld(setup, issuer: DemoIssuer) -> None:
    gw, upstream = setup
    headers = {"Authorization": f"Bearer {token(issuer)}", "X-Request-ID": "leak-1"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/claim/acme", headers=headers) as r:
            assert r.status == 200 and await r.read() == SECRET_BODY  # its own tenant: fine
        upstream.ports.clear()
        async with http.get(f"{gw.url}/claim/globex?big=1", headers=headers) as r:
            body = await r.read()
            assert r.status == 502
            assert r.headers["Content-Type"] == "application/problem+json"
            assert "X-Tenant-ID" not in r.headers
        assert json.loads(body)["type"] == "urn:shopino-gateway:tenant-leak-blocked"
        assert b"CUSTOMER-LEDGER" not in body
        leaked_port = upstream.ports[-1][1]
        for _ in range(5):  # the connection that carried the withheld body is never used again
            async with http.get(f"{gw.url}/api/after-leak", headers=headers) as r:
                assert r.status == 200
        assert leaked_port not in [port for path, port in upstream.ports if path == "/api/after-leak"]
        for trail in ("acme", "globex"):
            records = await audit_events(http, gw, trail)
            leak = [e for e in records if e["event"] == "tenant.leak_blocked" and e["request_id"] == "leak-1"]
            assert leak and leak[0]["details"]["claimed_tenants"] == ["globex"], trail


async def test_required_echo(setup, issuer: DemoIssuer) -> None:
    gw, _ = setup
    headers = {"Authorization": f"Bearer {token(issuer)}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/must-echo/echo-tenant", headers=headers) as r:
            assert r.status == 200 and r.headers["X-Tenant-ID"] == "acme"
        async with http.get(f"{gw.url}/must-echo/silent", headers=headers) as r:  # no echo at all
            assert r.status == 502
            assert (await r.json())["type"] == "urn:shopino-gateway:tenant-leak-blocked"


HEADER_NAMES = st.sampled_from(
    [s for n in (*IDENTITY, *EXTRA_STRIPPED, "X-Request-ID") for s in _spellings(n)]
)
HEADER_VALUES = st.sampled_from(["globex", "acme", "", "admin,finance", "v1.1.AAAA", "globex, acme"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=12))
def test_no_client_headers_change_the_tenant_the_upstream_sees(setup, issuer: DemoIssuer, extra) -> None:
    gw, _ = setup
    auth = ("Authorization", f"Bearer {token(issuer, roles=('inventory',))}")
    status, _, body = raw_request(gw, "GET", "/t/acme/prop", [auth, *extra])
    assert status == 200, body
    record = json.loads(body)
    _check_identity(gw, record, "acme", "alice", "inventory")


def test_gateway_key_warning_when_unset(tmp_path: Path, issuer: DemoIssuer) -> None:
    """Outside the demo, an unset context key is derived from the master key and logged."""
    upstream = TenantUpstream().start()
    try:
        gw = GatewayProc(
            tmp_path,
            {
                "upstreams": {"app": {"urls": [upstream.url]}},
                "routes": [{"name": "open", "prefix": "/", "upstream": "app", "auth": "none"}],
            },
            env={"SHOPINO_GATEWAY_CONTEXT_KEY": ""},
        ).start()
        gw.stop()
        assert "context_key_derived" in gw.logs()
    finally:
        upstream.stop()


async def test_identity_claims_that_would_inject_headers_are_refused(setup, issuer: DemoIssuer) -> None:
    gw, upstream = setup
    before = len(upstream.requests)
    bad = [
        token(issuer, sub="alice\r\nX-Tenant-ID: globex"),
        token(issuer, sub="alice\nglobex"),
        token(issuer, roles=("finance,tenant-admin",)),
        token(issuer, tenant="../globex"),
        token(issuer, tenant="acme\n"),
        # Regression: a lone surrogate cannot be UTF-8 encoded (the MAC raised, a 500), and a
        # trailing blank is stripped by HTTP (the backend saw another user than the one signed).
        token(issuer, sub="alice\ud800"),
        token(issuer, sub="alice "),
        token(issuer, roles=("inventory", " tenant-admin")),
        token(issuer, tenant="_system"),  # the gateway's own audit trail is no tenant
    ]
    async with aiohttp.ClientSession() as http:
        for tok in bad:
            async with http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {tok}"}) as r:
                assert r.status == 401
                assert (await r.json())["type"] == "urn:shopino-gateway:invalid-token"
    assert len(upstream.requests) == before


async def test_leak_blocked_on_the_aiohttp_transport_too(tmp_path: Path, issuer: DemoIssuer) -> None:
    upstream = TenantUpstream().start()
    jwks = issuer.write_jwks(tmp_path / "idp.jwks.json")
    config = {
        "auth": issuer_config(str(jwks)),
        "upstreams": {"app": {"urls": [upstream.url], "transport": "aiohttp"}},
        "routes": [{"name": "claim", "prefix": "/claim", "upstream": "app"}],
    }
    gw = GatewayProc(tmp_path, config).start()
    headers = {"Authorization": f"Bearer {token(issuer)}"}
    try:
        async with aiohttp.ClientSession() as http:
            # aiohttp hands a connection back by itself once a body has arrived whole (the bytes
            # then live in that response's buffer, not on the socket): a big body stays on the wire.
            async with http.get(f"{gw.url}/claim/globex?big=1", headers=headers) as r:
                assert r.status == 502 and b"CUSTOMER-LEDGER" not in await r.read()
            leaked_port = upstream.ports[-1][1]
            for _ in range(3):
                async with http.get(f"{gw.url}/claim/acme", headers=headers) as r:
                    assert r.status == 200 and await r.read() == SECRET_BODY
            assert leaked_port not in [port for _, port in upstream.ports[1:]]
    finally:
        gw.stop()
        upstream.stop()


async def test_the_system_trail_is_no_tenant_of_the_gateway_endpoints(setup, issuer: DemoIssuer) -> None:
    """SECURITY (review finding): a token naming tid "_system" could export the gateway's own
    trail through /_gateway/audit, or enrol MFA and create grants under it."""
    gw, _ = setup
    bearer = {"Authorization": f"Bearer {token(issuer, tenant='_system', roles=('tenant-admin',))}"}
    good = {"Authorization": f"Bearer {token(issuer, roles=('tenant-admin',))}"}
    async with aiohttp.ClientSession() as http:
        for method, path in (("GET", "/_gateway/audit"), ("GET", "/_gateway/grants")):
            async with http.request(method, f"{gw.url}{path}", headers=bearer) as r:
                assert r.status == 401, path
                assert "_system" not in await r.text()
        async with http.get(f"{gw.url}/_gateway/audit", headers=good) as r:
            assert r.status == 200  # the same request for a real tenant is served
