"""Helpers for the tenancy end-to-end tests: an upstream that can answer as any tenant, token
minting for several tenants and roles, raw requests with exact header spellings, audit reads."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.upstream import Upstream

ISS, AUD = "https://id.tenancy.test", "shopino-erp"
SECRET_BODY = b"CUSTOMER-LEDGER-OF-ANOTHER-TENANT " * 2000  # > one socket read: not fully buffered


class TenantUpstream(Upstream):
    """The echo upstream plus ``/claim/{tenant}`` (answers as that tenant, with data a client
    must never see) and ``*/echo-tenant*`` (echoes the request's X-Tenant-ID back). Every
    request records the gateway's source port, to see whether a connection was reused."""

    def __init__(self, name: str = "tenant-up") -> None:
        super().__init__(name)
        self.ports: list[tuple[str, int]] = []

    async def echo(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append((request.raw_path, int(peer[1]) if peer else 0))
        path = request.path
        if path.startswith("/claim/"):
            tenant = path.split("/")[2]
            # ?big: far more than socket and client buffers hold, so it is still on the wire
            # when the gateway withholds it (a small body may already sit in a client buffer).
            body = SECRET_BODY * (150 if "big" in request.query else 1)
            return web.Response(body=body, headers={"X-Tenant-ID": tenant})
        response = await super().echo(request)
        if "echo-tenant" in path and "X-Tenant-ID" in request.headers:
            response.headers["X-Tenant-ID"] = request.headers["X-Tenant-ID"]
        return response


def issuer_config(jwks_path: str) -> dict[str, Any]:
    return {"issuers": [{"issuer": ISS, "audience": AUD, "jwks_file": jwks_path}]}


def token(
    issuer: DemoIssuer,
    sub: str = "alice",
    tenant: str = "acme",
    roles: tuple[str, ...] = ("inventory",),
    *,
    mfa_age: float | None = 0,
    ttl: int = 600,
    iss: str = ISS,
) -> str:
    """An ES256 token; ``mfa_age`` None means password only, else MFA that many seconds ago."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": iss, "aud": AUD, "sub": sub, "tid": tenant, "roles": list(roles),
        "amr": ["pwd"] if mfa_age is None else ["pwd", "otp"],
        "iat": now, "exp": now + ttl,
    }  # fmt: skip
    if mfa_age is not None:
        claims["auth_time"] = int(now - mfa_age)
    key = serialization.load_pem_private_key(issuer.private_pem(), password=None)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": issuer.kid})  # type: ignore[arg-type]


def raw_request(
    gw: GatewayProc, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with header names spelled and repeated exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if not any(name.lower() == "host" for name, _ in headers):
            conn.putheader("Host", f"127.0.0.1:{gw.port}")
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def audit_events(http: aiohttp.ClientSession, gw: GatewayProc, tenant: str) -> list[dict[str, Any]]:
    async with http.get(
        f"{gw.admin_url}/admin/audit",
        params={"tenant": tenant, "format": "json"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as r:
        assert r.status == 200, await r.text()
        return list(json.loads(await r.read()))


def upstream_headers(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in record["headers"]]
