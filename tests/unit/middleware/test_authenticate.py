"""SPEC §5 / §6: the authentication stage, in its place in ``PIPELINE`` on a real runtime, with
ES256 tokens signed by a real key: a valid token reaches the upstream as its user and tenant;
a missing token is 401 with the RFC 6750 challenge; a forged signature, an expired token, an
untrusted issuer and a revoked token are refused alike (``invalid-token``); a route that needs
MFA refuses a password-only token (``mfa-required``) or a stale one; ``auth: none`` skips it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.demo.identities import make_user
from gateway.demo.issuer import DemoIssuer
from gateway.middleware.authenticate import authenticate
from gateway.pipeline import PIPELINE
from tests.support.issuers import AUD, TENANT_IDP
from tests.support.stage_server import problem_type
from tests.unit.middleware.conftest import EchoUpstream, Gateway, GatewayFactory, bearer, mint

CONFIG = (
    "routes:\n"
    "  - {name: api, prefix: /api, upstream: erp}\n"
    "  - {name: reports, prefix: /reports, upstream: erp, mfa: false}\n"
    "  - {name: finance, prefix: /finance, upstream: erp, mfa_max_age: 15m}\n"
    "  - {name: public, prefix: /public, upstream: erp, auth: none}\n"
)
INVALID = 'Bearer realm="shopino", error="invalid_token"'
ALICE = make_user("alice", "acme", ["clerk"], "pw")
MakeToken = Callable[[DemoIssuer, Path], str]


def test_the_stage_runs_in_the_pipeline() -> None:
    assert authenticate in PIPELINE


@pytest.fixture
async def gw(gateway: GatewayFactory) -> Gateway:
    return await gateway(CONFIG)


async def test_a_valid_token_reaches_the_upstream_as_its_user_and_tenant(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    token = mint(issuer, "acme", ["clerk"], user_id="alice")
    async with gw.client.get("/api/orders", headers=bearer(token)) as response:
        assert response.status == 200
    forwarded = dict(echo_upstream.headers())
    assert forwarded["X-User-ID"] == "alice"
    assert forwarded["X-Tenant-ID"] == "acme"
    assert forwarded["X-User-Roles"] == "clerk"


async def test_a_request_without_a_token_gets_the_bearer_challenge(
    gw: Gateway, echo_upstream: EchoUpstream
) -> None:
    async with gw.client.get("/api/orders") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="shopino"'
        assert (await response.json())["type"] == problem_type("missing-token")
    assert echo_upstream.seen == []


def _forged(issuer: DemoIssuer, pem: Path) -> str:
    # Same issuer, same kid, another key: the signature does not verify under the trusted key.
    forger = DemoIssuer(issuer=TENANT_IDP, audience=AUD, kid=issuer.kid)
    return forger.mint(ALICE, amr=("pwd", "otp"))


def _expired(issuer: DemoIssuer, pem: Path) -> str:
    # The trusted key, an hour ago: expired 50 minutes ago, well past the leeway.
    past = DemoIssuer.from_pem_file(pem, issuer=TENANT_IDP, audience=AUD, clock=lambda: time.time() - 3600)
    return past.mint(ALICE, amr=("pwd", "otp"), ttl=600)


def _untrusted_issuer(issuer: DemoIssuer, pem: Path) -> str:
    # The trusted key, but an issuer the gateway does not list.
    other = DemoIssuer.from_pem_file(pem, issuer="https://evil.example", audience=AUD)
    return other.mint(ALICE, amr=("pwd", "otp"))


def _wrong_audience(issuer: DemoIssuer, pem: Path) -> str:
    other = DemoIssuer.from_pem_file(pem, issuer=TENANT_IDP, audience="another-app")
    return other.mint(ALICE, amr=("pwd", "otp"))


def _garbage(issuer: DemoIssuer, pem: Path) -> str:
    return "not.a.jwt"


@pytest.mark.parametrize("make", [_forged, _expired, _untrusted_issuer, _wrong_audience, _garbage])
async def test_a_bad_token_is_refused_as_invalid(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream, tmp_path: Path, make: MakeToken
) -> None:
    token = make(issuer, issuer.write_private_pem(tmp_path / "idp.pem"))
    async with gw.client.get("/api/orders", headers=bearer(token)) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == INVALID
        assert (await response.json())["type"] == problem_type("invalid-token")
    assert echo_upstream.seen == []


async def test_a_password_only_token_is_refused_where_mfa_is_required(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    token = mint(issuer, "acme", ["clerk"], amr=("pwd",))
    async with gw.client.get("/api/orders", headers=bearer(token)) as response:
        assert response.status == 401
        assert 'error="insufficient_user_authentication"' in response.headers["WWW-Authenticate"]
        assert (await response.json())["type"] == problem_type("mfa-required")
    # ... and accepted on a route that says mfa: false.
    async with gw.client.get("/reports/q1", headers=bearer(token)) as response:
        assert response.status == 200
    assert [path for _, path, _, _ in echo_upstream.seen] == ["/reports/q1"]


async def test_a_stale_second_factor_is_refused_where_mfa_max_age_is_set(
    gw: Gateway, issuer: DemoIssuer
) -> None:
    stale = issuer.mint(ALICE, amr=("pwd", "otp"), auth_time=int(time.time()) - 3600)
    async with gw.client.get("/finance/ledger", headers=bearer(stale)) as response:
        assert response.status == 401
        assert "max_age=900" in response.headers["WWW-Authenticate"]
        assert (await response.json())["type"] == problem_type("mfa-required")
    fresh = mint(issuer, "acme", ["clerk"])
    async with gw.client.get("/finance/ledger", headers=bearer(fresh)) as response:
        assert response.status == 200


async def test_a_revoked_token_is_refused(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    token = mint(issuer, "acme", ["clerk"], user_id="alice")
    async with gw.client.get("/api/orders", headers=bearer(token)) as response:
        assert response.status == 200
    await gw.runtime.services.revocations.revoke("acme", "alice")
    async with gw.client.get("/api/orders", headers=bearer(token)) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == INVALID
        assert (await response.json())["type"] == problem_type("invalid-token")
    assert len(echo_upstream.seen) == 1


async def test_an_auth_none_route_skips_the_stage(gw: Gateway, echo_upstream: EchoUpstream) -> None:
    async with gw.client.get("/public/catalogue", headers={"Authorization": "Bearer garbage"}) as response:
        assert response.status == 200
    forwarded = dict(echo_upstream.headers())
    # No identity is made up for an unauthenticated request.
    assert "X-User-ID" not in forwarded and "X-Tenant-ID" not in forwarded
