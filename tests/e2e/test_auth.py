"""SPEC §5, §6, §7 (identity headers) through the real CLI: the JWT attack matrix, the gateway's
TOTP step end to end, and client identity headers never reaching the upstream."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.demo.identities import make_user
from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import GatewayProc
from tests.support.mfa_flow import gateway_mfa_token
from tests.support.upstream import Upstream

ISS, AUD = "https://id.test.example", "shopino-erp"


@pytest.fixture(scope="module")
def issuer() -> DemoIssuer:
    return DemoIssuer(issuer=ISS, audience=AUD)


@pytest.fixture(scope="module")
def alice():
    return make_user("alice", "acme", ("tenant-admin", "finance"), "pw-alice-123")


@pytest.fixture(scope="module")
def auth_gateway(tmp_path_factory, issuer: DemoIssuer) -> Any:
    upstream = Upstream("erp").start()
    tmp = tmp_path_factory.mktemp("auth")
    jwks = issuer.write_jwks(tmp / "idp.jwks.json")
    gw = GatewayProc(
        tmp,
        {
            "auth": {"issuers": [{"issuer": ISS, "audience": AUD, "jwks_file": str(jwks)}]},
            "upstreams": {"app": {"urls": [upstream.url]}},
            "routes": [
                {"name": "api", "prefix": "/api", "upstream": "app"},
                {"name": "fin", "prefix": "/fin", "upstream": "app", "mfa_max_age": "15m"},
                {"name": "reports", "prefix": "/reports", "upstream": "app", "mfa": False},
            ],
        },
    ).start()
    yield gw, upstream
    gw.stop()
    upstream.stop()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "tid": "acme",
        "roles": ["finance"],
        "amr": ["pwd", "otp"],
        "auth_time": now,
        "iat": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(issuer: DemoIssuer, claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
    key = serialization.load_pem_private_key(issuer.private_pem(), password=None)
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": issuer.kid, **(headers or {})})


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def attack_tokens(issuer: DemoIssuer) -> dict[str, str]:
    good = _sign(issuer, _claims())
    head, body, sig = good.split(".")
    public_pem = issuer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other_key = ec.generate_private_key(ec.SECP256R1())
    tampered_body = _b64({**_claims(), "tid": "globex"})
    now = int(time.time())
    tokens = {
        "alg_none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{body}.",
        "alg_none_with_sig": f"{_b64({'alg': 'none', 'kid': issuer.kid})}.{body}.{sig}",
        # HS256 keyed with the public key PEM: the classic algorithm-confusion forgery.
        # HS256 keyed with the public key PEM: the classic algorithm-confusion forgery.
        "hmac_with_public_key": _hs256(public_pem, _claims(), issuer.kid),
        "expired": _sign(issuer, _claims(iat=now - 1200, exp=now - 600, auth_time=now - 1200)),
        "future_nbf": _sign(issuer, _claims(nbf=now + 600)),
        "future_iat": _sign(issuer, _claims(iat=now + 600, exp=now + 1200)),
        "wrong_iss": _sign(issuer, _claims(iss="https://evil.example")),
        "wrong_aud": _sign(issuer, _claims(aud="other-app")),
        "unknown_kid": _sign(issuer, _claims(), {"kid": "no-such-kid"}),
        "other_key_same_kid": jwt.encode(
            _claims(), other_key, algorithm="ES256", headers={"kid": issuer.kid}
        ),
        "tampered_payload": f"{head}.{tampered_body}.{sig}",
        "tampered_signature": f"{head}.{body}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}",
        "lifetime_over_max": _sign(issuer, _claims(exp=now + 3 * 86400)),
        "jku_header": _sign(issuer, _claims(), {"jku": "https://evil.example/jwks"}),
        "x5u_header": _sign(issuer, _claims(), {"x5u": "https://evil.example/cert"}),
        "jwk_header": _sign(issuer, _claims(), {"jwk": {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}),
        "one_megabyte": "eyJ" + "A" * (1024 * 1024),
        "non_json_segments": f"{_b64(b'not json')}.{_b64(b'also not')}.{sig}",
        "two_segments": f"{head}.{body}",
    }
    for claim in ("exp", "iat", "sub", "iss", "aud", "tid"):
        tokens[f"missing_{claim}"] = _sign(issuer, {k: v for k, v in _claims().items() if k != claim})
    return tokens


def _hs256(secret: bytes, claims: dict[str, Any], kid: str) -> str:
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{_b64(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


async def test_jwt_attack_matrix_refused_without_echo(auth_gateway, issuer: DemoIssuer) -> None:
    gw, upstream = auth_gateway
    tokens = attack_tokens(issuer)
    before = len(upstream.requests)
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{gw.url}/api/x", headers={"Authorization": f"Bearer {_sign(issuer, _claims())}"}
        ) as r:
            assert r.status == 200  # the control case: a valid token passes
        for name, token in tokens.items():
            async with http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {token}"}) as r:
                body = await r.text()
                assert r.status in (401, 431), name
                if r.status == 401:
                    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"], name
                assert token[:60] not in body and token[-20:] not in body, name
    assert len(upstream.requests) == before + 1  # no attack reached the upstream
    logs = gw.logs_with('"reason":')
    assert '"reason":' in logs  # refusals are logged with their reason ...
    for name, token in tokens.items():  # ... and never with the token
        signature = token.split(".")[-1]
        assert len(signature) < 16 or signature[:40] not in logs, name
        assert token[:80] not in logs, name


async def test_mfa_requirements(auth_gateway, issuer: DemoIssuer) -> None:
    gw, _ = auth_gateway
    now = int(time.time())
    password_only = _sign(issuer, _claims(amr=["pwd"]))
    stale = _sign(issuer, _claims(auth_time=now - 3600))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {password_only}"}) as r:
            assert r.status == 401
            assert 'error="insufficient_user_authentication"' in r.headers["WWW-Authenticate"]
        async with http.get(f"{gw.url}/reports/x", headers={"Authorization": f"Bearer {password_only}"}) as r:
            assert r.status == 200  # mfa: false
        async with http.get(f"{gw.url}/fin/x", headers={"Authorization": f"Bearer {stale}"}) as r:
            assert r.status == 401
            assert "max_age=900" in r.headers["WWW-Authenticate"]
        async with http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {stale}"}) as r:
            assert r.status == 200  # no mfa_max_age on this route


async def test_identity_headers_come_from_the_token_only(auth_gateway, issuer: DemoIssuer) -> None:
    gw, _upstream = auth_gateway
    spoof = {
        "x-tenant-id": "globex",
        "X-USER-ID": "mallory",
        "X-User-Roles": "admin",
        "X-Gateway-Context": "v1.x",
    }
    headers = {"Authorization": f"Bearer {_sign(issuer, _claims())}", **spoof}
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/api/who", headers=headers) as r:
        record = await r.json()
    seen = {k.lower(): v for k, v in record["headers"]}
    assert seen["x-tenant-id"] == "acme"
    assert seen["x-user-id"] == "alice"
    assert seen["x-user-roles"] == "finance"
    # SPEC §7: the client's context is dropped; the gateway's own signed one takes its place.
    assert seen["x-gateway-context"].startswith("v1.") and seen["x-gateway-context"] != "v1.x"
    assert [k for k, _ in record["headers"]].count("X-Tenant-ID") == 1


async def test_totp_step_end_to_end(auth_gateway, issuer: DemoIssuer, tmp_path: Path) -> None:
    gw, _upstream = auth_gateway
    key_file = tmp_path / "idp.pem"
    key_file.write_bytes(issuer.private_pem())
    minted = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "token",
            "mint",
            "--key",
            str(key_file),
            # The thumbprint is base64url and may start with "-", which argparse would read as an
            # option (1 run in 64 failed that way); the "=" form binds it to --kid.
            f"--kid={issuer.kid}",
            "--iss",
            ISS,
            "--aud",
            AUD,
            "--sub",
            "bob",
            "--tenant",
            "acme",
            "--roles",
            "inventory",
            "--amr",
            "pwd",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=os.environ,
    )
    assert minted.returncode == 0, minted.stderr
    first = {"Authorization": f"Bearer {minted.stdout.strip()}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/_gateway/mfa/enroll", headers=first) as r:
            assert r.status == 200
            assert r.headers["Cache-Control"].startswith("no-store")
            enrollment = await r.json()
        assert enrollment["otpauth_uri"].startswith("otpauth://totp/")
        assert enrollment["qr_svg"].lstrip().startswith("<")
        totp = pyotp.TOTP(enrollment["secret"])
        async with http.post(f"{gw.url}/_gateway/mfa/activate", headers=first, json={"code": "000000"}) as r:
            assert r.status in (403, 400)  # a wrong code never activates
        code = totp.now()
        async with http.post(f"{gw.url}/_gateway/mfa/activate", headers=first, json={"code": code}) as r:
            assert r.status == 200, await r.text()
            recovery = (await r.json())["recovery_codes"]
        assert len(recovery) == 10
        # The activation's time step is used: replaying it is refused.
        async with http.post(f"{gw.url}/_gateway/mfa/verify", headers=first, json={"code": code}) as r:
            assert r.status in (403, 429)
        # A stolen password alone cannot replace the active second factor.
        async with http.post(f"{gw.url}/_gateway/mfa/enroll", headers=first) as r:
            assert r.status == 409
        async with http.post(
            f"{gw.url}/_gateway/mfa/verify", headers=first, json={"recovery_code": recovery[0]}
        ) as r:
            assert r.status == 200, await r.text()
            issued = await r.json()
            assert r.headers["Cache-Control"].startswith("no-store")
        assert issued["token_type"] == "Bearer" and issued["expires_in"] == 900
        async with http.post(
            f"{gw.url}/_gateway/mfa/verify", headers=first, json={"recovery_code": recovery[0]}
        ) as r:
            assert r.status in (403, 429)  # recovery codes are one-time
        async with http.get(f"{gw.url}/.well-known/jwks.json") as r:
            keys = (await r.json())["keys"]
        header = jwt.get_unverified_header(issued["access_token"])
        assert header["alg"] == "ES256" and header["kid"] in {k["kid"] for k in keys}
        claims = jwt.decode(issued["access_token"], options={"verify_signature": False})
        assert claims["sub"] == "bob" and claims["tid"] == "acme" and "otp" in claims["amr"]
        assert claims["aud"] == AUD
        mfa = {"Authorization": f"Bearer {issued['access_token']}"}
        async with http.get(f"{gw.url}/api/inventory", headers=mfa) as r:
            assert r.status == 200
            record = await r.json()
        assert ["X-Tenant-ID", "acme"] in record["headers"]


async def test_tenant_admin_exports_only_its_own_trail(auth_gateway, issuer: DemoIssuer) -> None:
    gw, _ = auth_gateway
    now = int(time.time())
    admin_acme = _sign(issuer, _claims(roles=["tenant-admin"]))
    admin_globex = _sign(issuer, _claims(sub="carol", tid="globex", roles=["tenant-admin"]))
    clerk = _sign(issuer, _claims(roles=["inventory"]))
    stale = _sign(issuer, _claims(roles=["tenant-admin"], auth_time=now - 3600))
    async with aiohttp.ClientSession() as http:
        # Put an event into globex's trail, then make sure acme's export never shows it.
        async with http.get(
            f"{gw.url}/_gateway/audit", headers={"Authorization": f"Bearer {admin_globex}"}
        ) as r:
            assert r.status == 200
        for fmt in ("json", "csv", "xml"):
            async with http.get(
                f"{gw.url}/_gateway/audit?format={fmt}&tenant=globex",
                headers={"Authorization": f"Bearer {admin_acme}"},
            ) as r:
                assert r.status == 200, fmt
                body = await r.text()
            assert "globex" not in body and "carol" not in body, fmt
        async with http.get(
            f"{gw.url}/_gateway/audit", headers={"Authorization": f"Bearer {admin_acme}"}
        ) as r:
            records = await r.json()
        assert records and {rec["tenant"] for rec in records} == {"acme"}
        # App. C: the export is signed by an anchor right after its own audit record.
        assert [rec["event"] for rec in records[-2:]] == ["audit.exported", "audit.anchor"]
        async with http.get(f"{gw.url}/_gateway/audit", headers={"Authorization": f"Bearer {clerk}"}) as r:
            assert r.status == 403
        async with http.get(f"{gw.url}/_gateway/audit", headers={"Authorization": f"Bearer {stale}"}) as r:
            assert r.status == 401
            assert "max_age=900" in r.headers["WWW-Authenticate"]
        async with http.get(f"{gw.url}/_gateway/audit") as r:
            assert r.status == 401


async def _mfa_token(http: aiohttp.ClientSession, gw: GatewayProc, issuer: DemoIssuer, user: str) -> str:
    return await gateway_mfa_token(http, gw.url, _sign(issuer, _claims(sub=user, amr=["pwd"])))


async def test_keys_rotate_keeps_old_tokens_and_revoke_old_kills_them(
    auth_gateway, issuer: DemoIssuer
) -> None:

    gw, _ = auth_gateway
    async with aiohttp.ClientSession() as http:
        before = await _mfa_token(http, gw, issuer, "rotating-user")
        rotated = gw.cli("keys", "rotate", "--json")
        assert rotated.returncode == 0, rotated.stderr
        assert len(json.loads(rotated.stdout)["jwks_kids"]) == 2  # the old key stays until its tokens expire
        async with http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {before}"}) as r:
            assert r.status == 200
        exposed = gw.cli("keys", "rotate", "--revoke-old", "--json")
        assert exposed.returncode == 0, exposed.stderr
        assert len(json.loads(exposed.stdout)["jwks_kids"]) == 1
        async with http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {before}"}) as r:
            assert r.status == 401  # signed by a revoked key: refused at once, cached claims or not
        after = await _mfa_token(http, gw, issuer, "rotating-user-2")
        async with http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {after}"}) as r:
            assert r.status == 200
    audit = gw.cli("audit", "export", "--tenant", "_system")
    events = [r["event"] for r in json.loads(audit.stdout)]
    assert events.count("keys.rotated") == 2


async def test_session_revocation_by_tenant_and_user(auth_gateway, issuer: DemoIssuer) -> None:

    gw, _ = auth_gateway
    old = int(time.time()) - 5
    dave = _sign(issuer, _claims(sub="dave", tid="initech", iat=old, auth_time=old))
    erin = _sign(issuer, _claims(sub="erin", tid="initech", iat=old, auth_time=old))
    other_tenant = _sign(issuer, _claims(sub="frank", tid="umbrella", iat=old, auth_time=old))

    async def status(token: str) -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            return r.status

    assert [await status(t) for t in (dave, erin, other_tenant)] == [200, 200, 200]
    user_only = gw.cli("sessions", "revoke", "--tenant", "initech", "--user", "dave")
    assert user_only.returncode == 0, user_only.stderr
    assert [await status(t) for t in (dave, erin, other_tenant)] == [401, 200, 200]
    whole = gw.cli("sessions", "revoke", "--tenant", "initech")
    assert whole.returncode == 0, whole.stderr
    assert [await status(t) for t in (dave, erin, other_tenant)] == [401, 401, 200]
    await asyncio.sleep(1.1)  # iat has one-second resolution: a token of the next second is new
    fresh = _sign(issuer, _claims(sub="erin", tid="initech"))
    assert await status(fresh) == 200
    trail = gw.cli("audit", "export", "--tenant", "initech")
    assert [r["event"] for r in json.loads(trail.stdout)][:2] == ["sessions.revoked", "sessions.revoked"]


async def test_master_key_rotation_reencrypts_and_old_key_can_go(
    gateway_factory, issuer: DemoIssuer, tmp_path: Path
) -> None:
    upstream = Upstream("erp").start()
    try:
        old_key = base64.b64encode(os.urandom(32)).decode()
        new_key = base64.b64encode(os.urandom(32)).decode()
        config = {
            "auth": {
                "issuers": [
                    {"issuer": ISS, "audience": AUD, "jwks_file": str(issuer.write_jwks(tmp_path / "j.json"))}
                ]
            },
            "upstreams": {"app": {"urls": [upstream.url]}},
            "routes": [{"name": "api", "prefix": "/api", "upstream": "app"}],
        }
        gw: GatewayProc = gateway_factory(config, env={"SHOPINO_GATEWAY_MASTER_KEY": f"old:{old_key}"})
        first = {"Authorization": f"Bearer {_sign(issuer, _claims(sub='grace', amr=['pwd']))}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{gw.url}/_gateway/mfa/enroll", headers=first) as r:
                secret = (await r.json())["secret"]
            async with http.post(
                f"{gw.url}/_gateway/mfa/activate", headers=first, json={"code": pyotp.TOTP(secret).now()}
            ) as r:
                recovery = (await r.json())["recovery_codes"]
        gw.stop()
        gw.env["SHOPINO_GATEWAY_MASTER_KEY"] = f"new:{new_key},old:{old_key}"  # the first encrypts
        gw.start()
        for _ in range(50):
            if "master_key_reencrypted" in gw.logs():
                break
            await asyncio.sleep(0.1)
        line = next(json.loads(x) for x in gw.logs().splitlines() if "master_key_reencrypted" in x)
        assert line["signing_records"] >= 1 and line["mfa_records"] >= 1
        gw.stop()
        gw.env["SHOPINO_GATEWAY_MASTER_KEY"] = f"new:{new_key}"  # the old key is gone
        gw.start()
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{gw.url}/_gateway/mfa/verify", headers=first, json={"recovery_code": recovery[0]}
            ) as r:
                assert r.status == 200, await r.text()
                token = (await r.json())["access_token"]
            async with http.get(f"{gw.url}/api/x", headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
    finally:
        upstream.stop()
