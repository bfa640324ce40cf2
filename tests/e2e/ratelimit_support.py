"""Config and client helpers shared by the rate-limit e2e tests."""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from gateway.demo.identities import make_user
from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import GatewayProc

ISS, AUD = "https://id.ratelimit.example", "shopino-erp"
ISSUER = DemoIssuer(issuer=ISS, audience=AUD)
# Gateways of one deployment share the master key (shared signing keys, rate-limit key hashing).
DEPLOYMENT_ENV = {"SHOPINO_GATEWAY_MASTER_KEY": base64.b64encode(b"k" * 32).decode()}


def token(sub: str, tenant: str = "acme") -> str:
    user = make_user(sub, tenant, ("finance",), "pw-unused-123")
    return ISSUER.mint(user, amr=("pwd", "otp"))


def limits_config(
    upstream_url: str, tmp: Path, rate_limits: dict[str, Any], routes: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    jwks = ISSUER.write_jwks(tmp / "idp.jwks.json")
    config = {
        "auth": {"issuers": [{"issuer": ISS, "audience": AUD, "jwks_file": str(jwks)}]},
        "upstreams": {"app": {"urls": [upstream_url], "connect_timeout": "1s", "read_timeout": "2s"}},
        "routes": [{"upstream": "app", **route} for route in routes],
        "rate_limits": rate_limits,
    }
    config.update(extra)
    return config


async def send(
    http: aiohttp.ClientSession,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> tuple[int, dict[str, str], bytes]:
    async with http.request(method, url, headers=headers, **kw) as response:
        return response.status, dict(response.headers), await response.read()


def ready(gw: GatewayProc, timeout: float = 10.0) -> GatewayProc:
    """Wait for /_gateway/ready: the first snapshot (switches, keys) is held."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{gw.url}/_gateway/ready", timeout=1):
                return gw
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway not ready:\n{gw.logs()}") from None
            time.sleep(0.05)
