"""SPEC §12: admin JWTs from the operators' issuer only, MFA required, the role matrix."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.upstream import Upstream

OPS, TENANT_IDP, AUD = "https://ops-id.example", "https://tenant-id.example", "shopino-erp"


@pytest.fixture(scope="module")
def issuers() -> dict[str, DemoIssuer]:
    return {
        "ops": DemoIssuer(issuer=OPS, audience=AUD),
        "tenant": DemoIssuer(issuer=TENANT_IDP, audience=AUD),
    }


@pytest.fixture(scope="module")
def admin_gateway(tmp_path_factory, issuers: dict[str, DemoIssuer]) -> Any:
    upstream = Upstream("erp").start()
    tmp = tmp_path_factory.mktemp("admin-auth")
    config = {
        "auth": {
            "issuers": [
                {
                    "issuer": OPS,
                    "audience": AUD,
                    "jwks_file": str(issuers["ops"].write_jwks(tmp / "ops.json")),
                },
                {
                    "issuer": TENANT_IDP,
                    "audience": AUD,
                    "jwks_file": str(issuers["tenant"].write_jwks(tmp / "t.json")),
                },
            ]
        },
        "admin": {"jwt_issuers": [OPS]},
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": [{"name": "api", "prefix": "/api", "upstream": "app"}],
    }
    gw = GatewayProc(tmp, config).start()
    yield gw
    gw.stop()
    upstream.stop()


def token(issuer: DemoIssuer, roles: list[str], amr: tuple[str, ...] = ("pwd", "otp")) -> str:
    from gateway.demo.identities import make_user

    user = make_user("operator", "shopino-ops", roles, "irrelevant-pw")
    return issuer.mint(user, amr=amr, ttl=600, auth_time=int(time.time()))


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
