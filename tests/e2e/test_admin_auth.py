"""SPEC §12: admin JWTs from the operators' issuer only, MFA required, the role matrix."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.issuers import OPS, issuer_entries, mint, operator_and_tenant_issuers
from tests.support.upstream import Upstream


@pytest.fixture(scope="module")
def issuers() -> dict[str, DemoIssuer]:
    return operator_and_tenant_issuers()


@pytest.fixture(scope="module")
def admin_gateway(tmp_path_factory, issuers: dict[str, DemoIssuer]) -> Any:
    upstream = Upstream("erp").start()
    tmp = tmp_path_factory.mktemp("admin-auth")
    config = {
        "auth": {"issuers": issuer_entries(issuers, tmp)},
        "admin": {"jwt_issuers": [OPS]},
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": [{"name": "api", "prefix": "/api", "upstream": "app"}],
    }
    gw = GatewayProc(tmp, config).start()
    yield gw
    gw.stop()
    upstream.stop()


def token(issuer: DemoIssuer, roles: list[str], amr: tuple[str, ...] = ("pwd", "otp")) -> str:
    return mint(issuer, "shopino-ops", roles, amr, user_id="operator")


@pytest.mark.parametrize(
    ("who", "method", "path", "expected"),
    [
        ("responder", "GET", "/admin/audit?tenant=_system", 200),
        ("responder", "GET", "/metrics", 200),
        ("responder", "POST", "/admin/keys/rotate", 200),
        ("responder", "POST", "/admin/reload", 403),
        ("responder", "GET", "/admin/config", 403),
        ("responder", "DELETE", "/admin/tenants/acme", 403),
        ("gateway-admin", "POST", "/admin/reload", 200),
        ("gateway-admin", "GET", "/admin/config", 200),
        ("no-role", "GET", "/metrics", 403),
        ("no-mfa", "GET", "/metrics", 401),
        ("tenant-idp", "GET", "/metrics", 401),  # a tenant's issuer never mints operator tokens
        ("none", "GET", "/metrics", 401),
        ("static", "POST", "/admin/reload", 200),
    ],
)
async def test_admin_role_matrix(
    admin_gateway: GatewayProc, issuers, who: str, method: str, path: str, expected: int
) -> None:
    bearer = {
        "responder": lambda: token(issuers["ops"], ["incident-responder"]),
        "gateway-admin": lambda: token(issuers["ops"], ["gateway-admin"]),
        "no-role": lambda: token(issuers["ops"], ["finance"]),
        "no-mfa": lambda: token(issuers["ops"], ["gateway-admin"], amr=("pwd",)),
        "tenant-idp": lambda: token(issuers["tenant"], ["gateway-admin"]),
        "static": lambda: ADMIN_TOKEN,
        "none": lambda: "",
    }[who]()
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{admin_gateway.admin_url}{path}", headers=headers) as r,
    ):
        assert r.status == expected, await r.text()
        if expected >= 400:
            assert r.headers["Content-Type"].startswith("application/problem+json")
