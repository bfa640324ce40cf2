"""Routes with ``audit: true`` (Appendix A): each request is filed in the acting tenant's trail,
with no query string; other routes and anonymous requests leave no such record."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from gateway.demo.identities import make_user
from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import GatewayProc
from tests.support.upstream import Upstream

ISS, AUD = "https://id.test.example", "shopino-erp"


async def test_audited_route_files_each_request_in_the_tenant_trail(
    gateway_factory, upstream: Upstream, tmp_path: Path
) -> None:
    issuer = DemoIssuer(issuer=ISS, audience=AUD)
    jwks = issuer.write_jwks(tmp_path / "idp.jwks.json")
    gw: GatewayProc = gateway_factory(
        {
            "auth": {"issuers": [{"issuer": ISS, "audience": AUD, "jwks_file": str(jwks)}]},
            "upstreams": {"app": {"urls": [upstream.url]}},
            "routes": [
                {
                    "name": "fin",
                    "prefix": "/api/finance",
                    "module": "finance",
                    "upstream": "app",
                    "audit": True,
                },
                {"name": "inv", "prefix": "/api/inventory", "module": "inventory", "upstream": "app"},
            ],
        }
    )
    alice = make_user("alice", "acme", ("finance",), "pw-alice-123")
    token = issuer.mint(alice, amr=("pwd", "otp"))
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{gw.url}/api/finance/invoices/7?customer=jane@example.com", headers=headers
        ) as r:
            assert r.status == 200
        async with http.post(f"{gw.url}/api/finance/invoices", headers=headers, data=b"{}") as r:
            assert r.status == 200
        async with http.get(f"{gw.url}/api/inventory/items", headers=headers) as r:
            assert r.status == 200
        async with http.get(f"{gw.url}/api/finance/invoices") as r:  # no token: no tenant, no record
            assert r.status == 401

    result = gw.cli("audit", "export", "--tenant", "acme", "--format", "json")
    assert result.returncode == 0, result.stderr
    accessed = [r for r in json.loads(result.stdout) if r["event"] == "data.accessed"]
    assert [(r["details"]["method"], r["details"]["path"]) for r in accessed] == [
        ("GET", "/api/finance/invoices/7"),
        ("POST", "/api/finance/invoices"),
    ]
    assert all(r["actor"] == "alice" and r["details"]["module"] == "finance" for r in accessed)
    assert all(r["details"]["status"] == 200 and r["request_id"] for r in accessed)
    # SECURITY: the query string (here an e-mail address) never reaches the trail.
    assert "jane@example.com" not in result.stdout
