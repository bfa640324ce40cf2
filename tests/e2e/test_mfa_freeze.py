"""The MFA enrolment freeze through real processes (a gateway, a redis-server, the CLI): users
enrol, the store is reset (FLUSHALL, or killed and restarted from an older snapshot), and a
password-only token that would bind a new second factor is refused (the attack), while an
enrolment the store kept still verifies. The freeze survives a gateway restart, the wrong
admin roles cannot lift it, ``mfa unfreeze`` does, and each step is in the audit trail."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pyotp
import pytest
import redis

from gateway.demo.identities import make_user
from gateway.demo.issuer import DemoIssuer
from tests.e2e.ratelimit_support import ready
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.issuers import OPS, issuer_entries, mint, operator_and_tenant_issuers
from tests.support.redis_server import RedisServer
from tests.support.upstream import Upstream

FROZEN_TYPE = "urn:shopino-gateway:mfa-enrolment-frozen"


@pytest.fixture
def empty_redis() -> AsyncIterator[RedisServer]:
    """A private server without persistence: a restart brings it back empty (or from a SAVE)."""
    server = RedisServer(appendonly=False).start()
    yield server  # type: ignore[misc]
    server.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No keep-alive: the gateway is restarted mid-test, a pooled connection would be dead.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), connector=connector) as session:
        yield session


def password_token(issuer: DemoIssuer, user: str) -> str:
    """What a stolen password gets: a first-factor token (amr pwd) from the tenant's IdP."""
    return issuer.mint(make_user(user, "acme", ["orders"], "irrelevant-pw"), amr=("pwd",), ttl=600)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def post(http: aiohttp.ClientSession, url: str, tok: str, body: Any = None) -> tuple[int, Any, str]:
    async with http.post(url, headers=bearer(tok), json=body) as r:
        return r.status, await r.json(content_type=None), r.headers.get("Content-Type", "")


async def enrol(http: aiohttp.ClientSession, gw: GatewayProc, tok: str) -> list[str]:
    """Enroll and activate; the recovery codes."""
    status, data, _ = await post(http, f"{gw.url}/_gateway/mfa/enroll", tok)
    assert status == 200, data
    code = pyotp.TOTP(data["secret"]).now()
    status, data, _ = await post(http, f"{gw.url}/_gateway/mfa/activate", tok, {"code": code})
    assert status == 200, data
    return list(data["recovery_codes"])


async def admin(
    http: aiohttp.ClientSession,
    gw: GatewayProc,
    method: str,
    path: str,
    tok: str = ADMIN_TOKEN,
    body: Any = None,
) -> tuple[int, Any]:
    async with http.request(method, gw.admin_url + path, headers=bearer(tok), json=body) as r:
        return r.status, await r.json(content_type=None)


async def system_events(
    http: aiohttp.ClientSession, gw: GatewayProc, tenant: str = "_system"
) -> list[dict[str, Any]]:
    async with http.get(
        f"{gw.admin_url}/admin/audit",
        params={"tenant": tenant, "format": "json"},
        headers=bearer(ADMIN_TOKEN),
    ) as r:
        assert r.status == 200, await r.text()
        return list(json.loads(await r.read()))


async def frozen(http: aiohttp.ClientSession, gw: GatewayProc) -> bool:
    try:
        status, data = await admin(http, gw, "GET", "/admin/mfa/freeze")
    except (aiohttp.ClientError, TimeoutError):
        return False
    return status == 200 and data["frozen"] is True and data["written_back"] is True


async def gauge_is(http: aiohttp.ClientSession, gw: GatewayProc, value: int) -> bool:
    async with http.get(f"{gw.admin_url}/metrics", headers=bearer(ADMIN_TOKEN)) as r:
        text = await r.text()
    found = re.search(r"^shopino_gateway_mfa_enrolment_frozen (\S+)$", text, re.MULTILINE)
    return found is not None and float(found.group(1)) == value


async def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def cli_as(gw: GatewayProc, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOPINO_GATEWAY_ADMIN_URL": gw.admin_url, "SHOPINO_GATEWAY_ADMIN_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env, timeout=30
    )


@pytest.mark.parametrize("fault", ["flushall", "restart-older"])
async def test_a_store_reset_freezes_mfa_enrolment_until_an_operator_lifts_it(
    fault: str,
    gateway_factory,
    upstream: Upstream,
    empty_redis: RedisServer,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    issuers = operator_and_tenant_issuers()
    idp = issuers["tenant"]
    config = {
        "auth": {"issuers": issuer_entries(issuers, tmp_path)},
        "admin": {"jwt_issuers": [OPS]},
        "state": {"url": empty_redis.url},
        "killswitch": {"resync": "1s"},
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": [{"name": "api", "prefix": "/api", "upstream": "app"}],  # MFA required
    }
    env = {"SHOPINO_GATEWAY_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    gw = ready(gateway_factory(json.loads(json.dumps(config)), env=env))
    assert not await frozen(http, gw) and await gauge_is(http, gw, 0)

    alice, bob = password_token(idp, "alice"), password_token(idp, "bob")
    alice_codes = await enrol(http, gw, alice)
    if fault == "restart-older":
        with redis.Redis(port=empty_redis.port, password=empty_redis.password) as client:
            client.save()  # the snapshot the store comes back from: alice enrolled, bob not yet
    await enrol(http, gw, bob)
    # A security write after the snapshot (it counts in store:seq): the older store lacks it.
    status, data = await admin(http, gw, "POST", "/admin/sessions/revoke", body={"tenant": "globex"})
    assert status == 200, data

    if fault == "flushall":
        with redis.Redis(port=empty_redis.port, password=empty_redis.password) as client:
            client.flushall()  # every enrolment is gone
    else:
        assert empty_redis.proc is not None
        empty_redis.proc.kill()  # SIGKILL, no save: it comes back from the older dump.rdb
        empty_redis.proc.wait()
        empty_redis.proc = None
        empty_redis.start()
    await wait_for(lambda: frozen(http, gw), 10, "the reset was noticed and the freeze stored")

    # SECURITY, the attack: bob's enrolment is lost; his stolen password alone would bind the
    # attacker's authenticator. Refused, with the freeze's own problem type.
    for tok in (bob, alice):
        status, problem, content_type = await post(http, f"{gw.url}/_gateway/mfa/enroll", tok)
        assert status == 503 and content_type.startswith("application/problem+json"), problem
        assert problem["type"] == FROZEN_TYPE and "operator" in problem["detail"], problem
        assert "secret" not in problem and "otpauth_uri" not in problem
    status, problem, _ = await post(http, f"{gw.url}/_gateway/mfa/activate", bob, {"code": "123456"})
    assert status == 503 and problem["type"] == FROZEN_TYPE

    # Verification of what the store still holds is unaffected; a lost enrolment verifies
    # nothing, so its user gets no MFA token and MFA routes keep refusing the password token.
    status, data, _ = await post(
        http, f"{gw.url}/_gateway/mfa/verify", alice, {"recovery_code": alice_codes[1]}
    )
    if fault == "restart-older":
        assert status == 200, data
        async with http.get(f"{gw.url}/api/orders", headers=bearer(data["access_token"])) as r:
            assert r.status == 200
    else:
        assert status == 409 and data["type"] == "urn:shopino-gateway:conflict", data
    async with http.get(f"{gw.url}/api/orders", headers=bearer(bob)) as r:
        assert r.status == 401 and (await r.json())["type"] == "urn:shopino-gateway:mfa-required"

    # The freeze is in the store: a restarted gateway (no memory of the reset) keeps it.
    gw.stop()
    gw.start()
    ready(gw)
    status, problem, _ = await post(http, f"{gw.url}/_gateway/mfa/enroll", bob)
    assert status == 503 and problem["type"] == FROZEN_TYPE, problem
    shown = gw.cli("mfa", "status")
    assert shown.returncode == 0 and "FROZEN" in shown.stdout, shown
    await wait_for(lambda: gauge_is(http, gw, 1), 10, "the restarted gateway's gauge says frozen")

    # SECURITY: only gateway-admin lifts it; the others are refused and it stays in force.
    ops = issuers["ops"]
    responder = mint(ops, "shopino-ops", ["incident-responder"], user_id="resp")
    viewer = mint(ops, "shopino-ops", ["gateway-viewer"], user_id="view")
    tenant_admin = mint(idp, "acme", ["gateway-admin"], user_id="root")  # a tenant IdP's claim
    lift = {"reason": "trying"}
    assert (await admin(http, gw, "GET", "/admin/mfa/freeze", responder))[0] == 200
    assert (await admin(http, gw, "GET", "/admin/mfa/freeze", viewer))[0] == 200
    assert (await admin(http, gw, "DELETE", "/admin/mfa/freeze", responder, lift))[0] == 403
    assert (await admin(http, gw, "DELETE", "/admin/mfa/freeze", viewer, lift))[0] == 403
    assert (await admin(http, gw, "DELETE", "/admin/mfa/freeze", tenant_admin, lift))[0] == 401
    assert (await admin(http, gw, "DELETE", "/admin/mfa/freeze", "", lift))[0] == 401
    assert (await admin(http, gw, "DELETE", "/admin/mfa/freeze", ADMIN_TOKEN, {}))[0] == 400  # no reason
    refused = cli_as(gw, responder, "mfa", "unfreeze", "--reason", "responder tries")
    assert refused.returncode == 2 and "403" in refused.stderr, refused
    allow = {"tenant": "acme", "user": "bob", "reason": "trying"}
    assert (await admin(http, gw, "POST", "/admin/mfa/allowances", responder, allow))[0] == 403
    assert (await admin(http, gw, "POST", "/admin/mfa/allowances", viewer, allow))[0] == 403

    # One user, identity checked out of band, may enrol once during the freeze; nobody else.
    carol = password_token(idp, "carol")
    allowed = gw.cli(
        "mfa",
        "allow",
        "--tenant",
        "acme",
        "--user",
        "carol",
        "--reason",
        "ID checked by phone",
        "--ttl",
        "5m",
    )
    assert allowed.returncode == 0 and "carol of acme may enrol once" in allowed.stdout, allowed
    await enrol(http, gw, carol)
    status, problem, _ = await post(http, f"{gw.url}/_gateway/mfa/enroll", carol)
    assert status == 503 and problem["type"] == FROZEN_TYPE  # used up
    assert await frozen(http, gw)
    status, problem, _ = await post(http, f"{gw.url}/_gateway/mfa/enroll", bob)
    assert status == 503

    # The operator lifts it through the CLI: enrolment works again.
    lifted = gw.cli("mfa", "unfreeze", "--reason", "enrolments checked against the backup")
    assert lifted.returncode == 0 and "open again" in lifted.stdout, lifted
    assert not await frozen(http, gw)
    await wait_for(lambda: gauge_is(http, gw, 0), 10, "the gauge says open")
    await enrol(http, gw, bob)
    again = gw.cli("mfa", "unfreeze", "--reason", "twice")
    assert again.returncode == 2 and "not frozen" in again.stderr, again

    # Audited: the freeze with the reset's reason, the lift with actor and reason, and the
    # refused enrolments in the tenant's own trail.
    events = await system_events(http, gw)
    frozen_records = [e for e in events if e["event"] == "mfa.enrolment_frozen"]
    assert len(frozen_records) == 1, frozen_records
    reason = "marker missing" if fault == "flushall" else "security writes went back"
    assert frozen_records[0]["actor"] == "gateway"
    assert frozen_records[0]["details"]["reason"] in (reason, "marker changed"), frozen_records
    unfrozen = [e for e in events if e["event"] == "mfa.enrolment_unfrozen"]
    assert len(unfrozen) == 1, unfrozen
    assert unfrozen[0]["actor"] == "admin-token:tests"
    assert unfrozen[0]["details"]["reason"] == "enrolments checked against the backup"
    assert unfrozen[0]["details"]["freeze"] == frozen_records[0]["details"]["freeze"]
    restored = [e for e in events if e["event"] == "store.restored"]
    assert restored and restored[0]["details"]["held"]["mfa_freeze"] == 1
    refusals = [e for e in await system_events(http, gw, "acme") if e["event"] == "mfa.enrolment_refused"]
    assert {(e["actor"], e["details"]["problem"]) for e in refusals} >= {("bob", "mfa-enrolment-frozen")}
    allowed_records = [e for e in events if e["event"] == "mfa.enrolment_allowed"]
    assert [(e["actor"], e["details"]["user"], e["details"]["reason"]) for e in allowed_records] == [
        ("admin-token:tests", "carol", "ID checked by phone")
    ]
    assert gw.logs().count('"event":"mfa_enrolment_frozen"') == 1
