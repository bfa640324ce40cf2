"""Issue 13 / SPEC §3.4: on a route where it may wait (a JWT route with its own policies, on a
real redis-server), the ``pre_auth`` hit goes to the store with the route stage's; whatever
happens first settles it alone (``settle_pre_auth``), so a request over ``pre_auth`` is
refused by it (429 ``rate-limited``) whatever a later stage would have said — a missing or
forged token, a new token needing a full signature check, a body over ``max_body`` — and every
request is counted once, however its hit was sent."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from gateway.demo.issuer import DemoIssuer
from tests.support.stage_server import problem_type
from tests.unit.middleware.conftest import EchoUpstream, Gateway, GatewayFactory, bearer, mint

PRE_AUTH = 4
CONFIG = (
    "routes:\n"
    "  - {name: api, prefix: /api, upstream: erp, rate_limit: [roomy], max_body: 16}\n"
    "rate_limits:\n"
    f"  pre_auth: [{{key: ip, limit: '{PRE_AUTH}/minute', strategy: moving-window}}]\n"
    "  policies:\n"
    "    roomy: [{key: user, limit: '100/minute'}]\n"
)


@pytest.fixture
async def gw(gateway: GatewayFactory, redis_url: str) -> Gateway:
    return await gateway(CONFIG, state_url=redis_url)


async def use_up_pre_auth(gw: Gateway, token: str, requests: int = PRE_AUTH) -> None:
    """``requests`` of the same (cached after the first) token, all let through: each one's
    hit rides with the route stage's."""
    for _ in range(requests):
        async with gw.client.get("/api/orders", headers=bearer(token)) as response:
            assert response.status == 200


async def assert_rate_limited(gw: Gateway, method: str = "GET", **kwargs: object) -> None:
    async with gw.client.request(method, "/api/orders", **kwargs) as response:  # type: ignore[arg-type]
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["type"] == problem_type("rate-limited")


async def test_a_cached_token_over_pre_auth_is_refused_by_it(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    token = mint(issuer, "acme", ["clerk"])
    await use_up_pre_auth(gw, token)
    await assert_rate_limited(gw, headers=bearer(token))  # the route's own policy has room
    assert len(echo_upstream.seen) == PRE_AUTH


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("forged.token.value"), {"Authorization": "Basic YTpi"}],
)
async def test_over_pre_auth_a_bad_or_missing_token_is_refused_as_a_flood(
    gw: Gateway, issuer: DemoIssuer, headers: dict[str, str]
) -> None:
    await use_up_pre_auth(gw, mint(issuer, "acme", ["clerk"]))
    await assert_rate_limited(gw, headers=headers)


async def test_over_pre_auth_a_new_token_is_refused_before_its_signature_check(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    await use_up_pre_auth(gw, mint(issuer, "acme", ["clerk"], user_id="alice"))
    await assert_rate_limited(gw, headers=bearer(mint(issuer, "acme", ["clerk"], user_id="bob")))
    assert len(echo_upstream.seen) == PRE_AUTH


def signature_failures() -> float:
    """What ``/metrics`` reports of signatures checked and found bad."""
    value = REGISTRY.get_sample_value("shopino_gateway_auth_failures_total", {"reason": "bad_signature"})
    return value or 0.0


async def test_over_pre_auth_a_forged_token_costs_no_signature_check(gw: Gateway, issuer: DemoIssuer) -> None:
    # SECURITY: a signature flood is shed by pre_auth before any ES256 work.
    forger = DemoIssuer(issuer=issuer.issuer, audience=issuer.audience, kid=issuer.kid)
    forged = mint(forger, "acme", ["clerk"])
    before = signature_failures()
    async with gw.client.get("/api/orders", headers=bearer(forged)) as response:  # under the limit
        assert response.status == 401
    assert signature_failures() == before + 1  # checked, and found forged
    await use_up_pre_auth(gw, mint(issuer, "acme", ["clerk"]), PRE_AUTH - 1)
    await assert_rate_limited(gw, headers=bearer(forged))
    assert signature_failures() == before + 1  # refused without being checked


async def test_over_pre_auth_an_oversized_body_is_refused_by_pre_auth(
    gw: Gateway, issuer: DemoIssuer
) -> None:
    token = mint(issuer, "acme", ["clerk"])
    await use_up_pre_auth(gw, token)
    await assert_rate_limited(gw, "POST", headers=bearer(token), data=b"x" * 64)


async def test_every_request_is_counted_once_however_its_hit_was_sent(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    token = mint(issuer, "acme", ["clerk"])
    async with gw.client.get("/api/orders") as response:  # settled alone by authentication
        assert response.status == 401
    async with gw.client.get("/api/orders", headers=bearer(token)) as response:  # settled alone
        assert response.status == 200
    for _ in range(PRE_AUTH - 2):
        async with gw.client.get("/api/orders", headers=bearer(token)) as response:  # rides along
            assert response.status == 200
    await assert_rate_limited(gw, headers=bearer(token))
    assert len(echo_upstream.seen) == PRE_AUTH - 1
