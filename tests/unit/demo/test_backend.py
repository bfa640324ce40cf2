"""The demo ERP backend, issuer and identities (what ``shopino-gateway demo`` runs behind the
gateway, and what the end-to-end proxy tests talk to)."""

from __future__ import annotations

import hashlib
import json
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pyotp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.demo.backend import LOGIN_TTL, make_backend_app, pattern_bytes, start_backend
from gateway.demo.identities import DEMO_PASSWORDS, DemoUser, PasswordHash, default_users
from gateway.demo.issuer import DEFAULT_AUDIENCE, DEFAULT_ISSUER, DemoIssuer

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
ACME = {"X-Tenant-ID": "acme"}
GLOBEX = {"X-Tenant-ID": "globex"}


@pytest.fixture(scope="module")
def users() -> tuple[DemoUser, ...]:
    return default_users()  # scrypt hashing: once per module, not per test


@pytest.fixture(scope="module")
def issuer() -> DemoIssuer:
    return DemoIssuer()


@pytest.fixture
async def client(aiohttp_client: Any, issuer: DemoIssuer, users: tuple[DemoUser, ...]) -> Client:
    return await aiohttp_client(make_backend_app(issuer, users))  # fresh store per test


def verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=DEFAULT_AUDIENCE,
                      issuer=DEFAULT_ISSUER,
                      options={"require": ["exp", "iat", "sub", "iss", "aud", "tid"]})


# --- identities and issuer ------------------------------------------------------------------

def test_default_users(users: tuple[DemoUser, ...]) -> None:
    by_name = {u.username: u for u in users}
    assert {n: (u.tenant, u.roles) for n, u in by_name.items()} == {
        "alice": ("acme", ("tenant-admin", "finance")), "bob": ("acme", ("inventory",)),
        "carol": ("globex", ("tenant-admin", "finance")), "sam": ("shopino-support", ("support",)),
    }
    for name, user in by_name.items():
        assert user.check_password(DEMO_PASSWORDS[name])
        assert not user.check_password(DEMO_PASSWORDS[name] + "x")
        assert pyotp.TOTP(user.totp_secret).verify(user.totp().now())
    assert len({u.totp_secret for u in users}) == len(users)


def test_totp_secrets_can_be_given() -> None:
    secret = pyotp.random_base32()
    alice = default_users({"alice": secret})[0]
    assert alice.totp_secret == secret


def test_reprs_hide_secrets(users: tuple[DemoUser, ...], issuer: DemoIssuer) -> None:
    alice = users[0]
    text = repr(alice) + repr(alice.password_hash) + repr(issuer)
    assert alice.totp_secret not in text
    assert alice.password_hash.salt.hex() not in text
    assert "salt" not in text and "digest" not in text and "mango" not in text
    assert "PRIVATE" not in text


def test_password_hash_is_salted() -> None:
    one, two = PasswordHash.create("same"), PasswordHash.create("same")
    assert one.salt != two.salt and one.digest != two.digest
    assert one.verify("same") and two.verify("same")


def test_mint_claims(issuer: DemoIssuer, users: tuple[DemoUser, ...]) -> None:
    carol = users[2]
    token = issuer.mint(carol, amr=("pwd", "otp"), ttl=60, auth_time=1_700_000_000)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == issuer.kid
    claims = verify(token, issuer.jwks())
    assert claims["sub"] == "carol" and claims["tid"] == "globex"
    assert claims["roles"] == ["tenant-admin", "finance"] and claims["amr"] == ["pwd", "otp"]
    assert claims["auth_time"] == 1_700_000_000 and claims["exp"] - claims["iat"] == 60
    assert issuer.mint(carol) != issuer.mint(carol)  # distinct jti


def test_jwks_file_and_private_pem(tmp_path: Path, issuer: DemoIssuer,
                                   users: tuple[DemoUser, ...]) -> None:
    jwks_path = issuer.write_jwks(tmp_path / "keys" / "jwks.json")
    (key,) = json.loads(jwks_path.read_text())["keys"]
    assert key["kid"] == issuer.kid and key["kty"] == "EC" and key["crv"] == "P-256"
    assert "d" not in key  # public only
    pem = issuer.write_private_pem(tmp_path / "keys" / "issuer.pem")
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    reloaded = DemoIssuer.from_pem_file(pem)
    assert reloaded.kid == issuer.kid  # kid is the key's RFC 7638 thumbprint
    assert verify(reloaded.mint(users[0]), json.loads(jwks_path.read_text()))["sub"] == "alice"


def test_private_pem_tightens_existing_file(tmp_path: Path, issuer: DemoIssuer) -> None:
    target = tmp_path / "issuer.pem"
    target.write_text("old")
    target.chmod(0o644)
    issuer.write_private_pem(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


# --- login ----------------------------------------------------------------------------------

async def test_login_returns_first_factor_token(client: Client, issuer: DemoIssuer) -> None:
    response = await client.post("/auth/login",
                                 json={"username": "alice", "password": DEMO_PASSWORDS["alice"]})
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == LOGIN_TTL
    served_jwks = await (await client.get("/.well-known/jwks.json")).json()
    assert served_jwks == issuer.jwks()
    claims = verify(body["access_token"], served_jwks)
    assert claims["sub"] == "alice" and claims["tid"] == "acme"
    assert claims["roles"] == ["tenant-admin", "finance"] and claims["amr"] == ["pwd"]
    assert claims["auth_time"] == claims["iat"] and claims["exp"] - claims["iat"] == LOGIN_TTL
    assert claims["jti"]


async def test_login_accepts_form_and_canonical_username(client: Client) -> None:
    response = await client.post("/auth/login",
                                 data={"username": " BOB ", "password": DEMO_PASSWORDS["bob"]})
    assert response.status == 200
    token = (await response.json())["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "bob"


async def test_failed_logins_are_indistinguishable(client: Client,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[bool] = []
    real_verify = PasswordHash.verify

    def counting_verify(self: PasswordHash, password: str) -> bool:
        checks.append(True)
        return real_verify(self, password)

    monkeypatch.setattr(PasswordHash, "verify", counting_verify)
    wrong = await client.post("/auth/login", json={"username": "alice", "password": "nope"})
    unknown = await client.post("/auth/login", json={"username": "mallory", "password": "nope"})
    assert wrong.status == unknown.status == 401
    assert await wrong.read() == await unknown.read()
    assert wrong.headers["Content-Type"] == unknown.headers["Content-Type"]
    assert len(checks) == 2  # the unknown user still paid for one scrypt (dummy hash)


@pytest.mark.parametrize("kwargs", [
    {"json": {"username": "alice"}}, {"json": ["alice", "pw"]}, {"data": b"{not json"},
    {"json": {"username": "alice", "password": 42}},
    {"json": {"username": "alice", "password": "x" * 5000}},
])
async def test_malformed_login_is_400(client: Client, kwargs: dict[str, Any]) -> None:
    headers = {"Content-Type": "application/json"} if "data" in kwargs else None
    response = await client.post("/auth/login", headers=headers, **kwargs)
    assert response.status == 400
    assert (await response.json())["error"] == "bad_request"


# --- tenant modules -------------------------------------------------------------------------

MODULE_PATHS = ["/api/inventory/items", "/api/finance/invoices", "/api/customers",
                "/api/manufacturing/boms", "/api/logistics/routes"]


@pytest.mark.parametrize("path", MODULE_PATHS)
async def test_tenant_sees_only_its_records(client: Client, path: str) -> None:
    acme = await (await client.get(path, headers=ACME)).json()
    globex = await (await client.get(path, headers=GLOBEX)).json()
    assert acme["items"] and globex["items"]
    assert {r["tenant"] for r in acme["items"]} == {"acme"}
    assert {r["tenant"] for r in globex["items"]} == {"globex"}
    globex_id = globex["items"][0]["id"]
    assert (await client.get(f"{path}/{globex_id}", headers=GLOBEX)).status == 200
    foreign = await client.get(f"{path}/{globex_id}", headers=ACME)
    assert foreign.status == 404 and foreign.headers["X-Tenant-ID"] == "acme"


async def test_customers_hold_realistic_pii(client: Client) -> None:
    acme = await (await client.get("/api/customers", headers=ACME)).json()
    globex = await (await client.get("/api/customers", headers=GLOBEX)).json()
    assert any(c["phone"].startswith("+92") for c in acme["items"])
    assert any(c["phone"].startswith("+880") for c in globex["items"])


async def test_create_is_tenant_scoped(client: Client) -> None:
    payload = {"name": "Zainab Tariq", "phone": "+92 345 6789012",
               "id": "cus-1", "tenant": "globex"}
    created = await client.post("/api/customers", json=payload,
                                headers={**ACME, "X-User-ID": "alice"})
    assert created.status == 201 and created.headers["X-Tenant-ID"] == "acme"
    record = await created.json()
    assert record["tenant"] == "acme" and record["id"] != "cus-1"  # server-owned keys win
    assert record["created_by"] == "alice" and created.headers["Location"].endswith(record["id"])
    assert (await client.get(f"/api/customers/{record['id']}", headers=ACME)).status == 200
    assert (await client.get(f"/api/customers/{record['id']}", headers=GLOBEX)).status == 404
    bad = await client.post("/api/customers", json=["not", "an", "object"], headers=ACME)
    assert bad.status == 400


@pytest.mark.parametrize("path", MODULE_PATHS)
async def test_missing_tenant_is_401(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.status == 401
    assert (await response.json())["error"] == "missing_tenant"
    assert (await client.post(path, json={})).status == 401


async def test_unknown_tenant_is_404_and_echoed(client: Client) -> None:
    response = await client.get("/api/customers", headers={"X-Tenant-ID": "initech"})
    assert response.status == 404 and response.headers["X-Tenant-ID"] == "initech"


@pytest.mark.parametrize("path", [*MODULE_PATHS, "/debug/echo", "/debug/stream?bytes=10",
                                  "/healthz"])
async def test_responses_echo_tenant(client: Client, path: str) -> None:
    response = await client.get(path, headers=GLOBEX)
    assert response.status == 200
    assert response.headers["X-Tenant-ID"] == "globex"


async def test_leak_endpoint_answers_as_another_tenant(client: Client) -> None:
    response = await client.get("/debug/leak?as=globex", headers=ACME)
    assert response.headers["X-Tenant-ID"] == "globex"


async def test_healthz(client: Client) -> None:
    response = await client.get("/healthz")
    assert response.status == 200 and "X-Tenant-ID" not in response.headers


# --- debug endpoints ------------------------------------------------------------------------

async def test_echo_reports_raw_request(client: Client) -> None:
    headers = CIMultiDict([("X-Dup", "one"), ("X-Dup", "two")])
    response = await client.put("/debug/echo/a%2Fb/c?q=1%202&q=3", headers=headers, data=b"x" * 123)
    body = await response.json()
    assert body["method"] == "PUT" and body["path_qs"] == "/debug/echo/a%2Fb/c?q=1%202&q=3"
    assert [v for n, v in body["headers"] if n == "X-Dup"] == ["one", "two"]
    assert body["body_length"] == 123


@pytest.mark.parametrize(("size", "chunk"), [(0, 65536), (1000, 7), (300_001, 65536)])
async def test_stream_sends_the_pattern(client: Client, size: int, chunk: int) -> None:
    response = await client.get(f"/debug/stream?bytes={size}&chunk={chunk}")
    assert response.status == 200 and response.content_length == size
    data = await response.read()
    assert data == pattern_bytes(0, size)


@pytest.mark.parametrize("query", ["bytes=-1", "bytes=lots", "chunk=0", "chunk=nan"])
async def test_stream_rejects_bad_parameters(client: Client, query: str) -> None:
    assert (await client.get(f"/debug/stream?{query}")).status == 400


async def test_sink_hashes_a_streamed_body(client: Client) -> None:
    parts = [bytes([i]) * 50_000 for i in range(20)]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    response = await client.post("/debug/sink", data=body())
    assert await response.json() == {"bytes": 1_000_000,
                                     "sha256": hashlib.sha256(b"".join(parts)).hexdigest()}


async def test_slow_waits(client: Client) -> None:
    response = await client.get("/debug/slow?seconds=0.05")
    assert response.status == 200 and (await response.json())["slept"] == 0.05
    assert (await client.get("/debug/slow?seconds=9999")).status == 400


async def test_websocket_echo(client: Client) -> None:
    async with client.ws_connect("/debug/ws", headers=ACME) as ws:
        await ws.send_str("salaam")
        assert await ws.receive_str() == "salaam"
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes() == b"\x00\x01"
    assert (await client.get("/debug/ws")).status == 400  # not an upgrade


# --- running it in-process ------------------------------------------------------------------

async def test_start_backend_serves_and_closes(issuer: DemoIssuer,
                                               users: tuple[DemoUser, ...]) -> None:
    backend = await start_backend(issuer, users)
    assert backend.url.startswith("http://127.0.0.1:") and backend.port > 0
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{backend.url}/healthz") as response:
            assert response.status == 200
        ws = await session.ws_connect(f"{backend.url}/debug/ws")
        started = time.monotonic()
        await backend.close()  # with a WebSocket still open: closed for it, not waited on
        assert time.monotonic() - started < 1.0
        assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{backend.url}/healthz")
