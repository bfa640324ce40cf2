"""Review finding MEDIUM 1 through real processes: an operator revokes an exposed signing key
(``keys rotate --revoke-old``); Redis then comes back from a snapshot taken before the rotation,
marker and all (a replica that lagged). The gateway that rotated keeps refusing tokens signed
with the exposed key throughout, writes the revocation back, and a gateway started afterwards
refuses them too."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import redis

from gateway.auth.signing import SIGNING_KEYS_HASH
from gateway.demo.issuer import DemoIssuer
from gateway.state.generation import MARKER_KEY, SEQ_KEY
from tests.e2e.ratelimit_support import ready
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.mfa_flow import gateway_mfa_token
from tests.support.redis_server import RedisServer
from tests.support.tenancy import AUD, ISS, token
from tests.support.upstream import Upstream

PREFIX = "sgw:k:"  # RedisStore's key layout: what an RDB snapshot holds


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
def upstream() -> Any:
    server = Upstream("erp").start()
    yield server
    server.stop()


async def status(http: aiohttp.ClientSession, gw: GatewayProc, tok: str) -> int:
    async with http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {tok}"}) as r:
        return r.status


async def published(http: aiohttp.ClientSession, gw: GatewayProc) -> set[str]:
    async with http.get(f"{gw.url}/.well-known/jwks.json") as r:
        return {key["kid"] for key in (await r.json())["keys"]}


async def test_revoked_key_stays_revoked_through_a_rollback_to_an_older_snapshot(
    gateway_factory: Callable[..., GatewayProc],
    shared_redis_server: RedisServer,
    redis_url: str,
    upstream: Upstream,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    issuer = DemoIssuer(issuer=ISS, audience=AUD)
    config = {
        "auth": {
            "issuers": [{"issuer": ISS, "audience": AUD, "jwks_file": str(issuer.write_jwks(tmp_path / "j"))}]
        },
        "state": {"url": redis_url},
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": [{"name": "api", "prefix": "/api", "upstream": "app"}],
    }
    env = {"SHOPINO_GATEWAY_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}  # one deployment
    a = ready(gateway_factory(config, env=env))
    exposed_token = await gateway_mfa_token(
        http, a.url, token(issuer, "mia", "acme", ("orders",), mfa_age=None)
    )
    exposed = jwt.get_unverified_header(exposed_token)["kid"]
    assert await status(http, a, exposed_token) == 200

    with redis.Redis(port=shared_redis_server.port, password=shared_redis_server.password) as raw:
        older = {name: raw.dump(PREFIX + name) for name in (SIGNING_KEYS_HASH, SEQ_KEY, MARKER_KEY)}
        async with http.post(
            f"{a.admin_url}/admin/keys/rotate",
            json={"revoke_old": True},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r:
            assert r.status == 200, await r.text()
        assert await status(http, a, exposed_token) == 401
        # Redis comes back from the older snapshot, marker included (in one step: no probe
        # may see the store empty in between).
        with raw.pipeline(transaction=True) as rollback:
            rollback.flushall()
            for name, value in older.items():
                if value is not None:
                    rollback.restore(PREFIX + name, 0, value)
            rollback.execute()
        marker = older[MARKER_KEY] and raw.get(PREFIX + MARKER_KEY)

        # Through detection and write-back, the exposed key is never honoured nor published.
        deadline = time.monotonic() + 10
        while raw.get(PREFIX + MARKER_KEY) == marker:  # renewed by the write-back
            assert await status(http, a, exposed_token) == 401
            assert exposed not in await published(http, a)
            assert time.monotonic() < deadline, "no write-back within 10 s"
    assert await status(http, a, exposed_token) == 401

    # A gateway started after the write-back refuses it too.
    c = ready(gateway_factory(config, env=env))
    assert await status(http, c, exposed_token) == 401
    assert exposed not in await published(http, c)
    assert await published(http, c) == await published(http, a)
