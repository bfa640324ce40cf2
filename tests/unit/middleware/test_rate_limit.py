"""SPEC §3.4 / §3.7 / §8: the rate-limit stages and the login-outcome check, in their places in
``gateway.pipeline`` on a real runtime, on both state stores (a real redis-server and the local
store): ``pre_auth`` over its limit is 429 ``rate-limited`` with ``Retry-After`` and the
RateLimit headers, before any token is read; a route policy by user counts each user apart; a
login route locks a username after its failures (upstream 401/403) and the locked attempt never
reaches the upstream; with the store down, ``on_store_failure`` decides (allow, deny)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from multidict import CIMultiDict

from gateway.context import RequestContext
from gateway.demo.issuer import DemoIssuer
from gateway.middleware.login_outcome import check_login_outcome
from gateway.middleware.rate_limit import limit_pre_auth, limit_route
from gateway.pipeline import PIPELINE, RESPONSE_CHECKS
from tests.support.redis_server import RedisServer
from tests.support.stage_server import problem_type
from tests.unit.middleware.conftest import EchoUpstream, GatewayFactory, bearer, mint

ROUTES = (
    "routes:\n"
    "  - {name: api, prefix: /api, upstream: erp, rate_limit: [per-user]}\n"
    "  - {name: login, prefix: /login, upstream: erp, auth: none, methods: [POST], login: true}\n"
    "  - {name: public, prefix: /public, upstream: erp, auth: none}\n"
)


def limits(pre_auth: str = "[]", *, on_store_failure: str = "local") -> str:
    return (
        "rate_limits:\n"
        f"  on_store_failure: {on_store_failure}\n"
        "  store_timeout: 100ms\n"
        f"  pre_auth: {pre_auth}\n"
        "  policies:\n"
        "    per-user: [{key: user, limit: '2/minute'}]\n"
        "  login: {failures_per_ip: 20, failures_per_username: 2, window: 15m, base_lockout: 1m}\n"
    )


def test_the_stages_run_in_the_pipeline() -> None:
    assert PIPELINE.index(limit_pre_auth) < PIPELINE.index(limit_route)
    assert check_login_outcome in RESPONSE_CHECKS


def test_the_login_outcome_waits_only_on_a_login_route() -> None:
    """Any other route's answer gets no coroutine to await (gateway.proxy.ResponseCheck); a login
    route's does, and the lockout tests below show it is awaited (the failures count)."""
    not_login = cast(RequestContext, SimpleNamespace(login_subjects=None))
    assert check_login_outcome(not_login, 401, CIMultiDict()) is None


async def test_pre_auth_over_its_limit_is_refused_with_retry_after(
    gateway: GatewayFactory, store_url: str, echo_upstream: EchoUpstream
) -> None:
    gw = await gateway(ROUTES + limits("[{key: ip, limit: '2/minute'}]"), state_url=store_url)
    for _ in range(2):
        async with gw.client.get("/public/a") as response:
            assert response.status == 200
    # Over pre_auth, a request with a bad token is refused as a flood, not as a bad token.
    async with gw.client.get("/api/orders", headers=bearer("forged.token.value")) as response:
        assert response.status == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert response.headers["RateLimit-Policy"]
        assert response.headers["RateLimit"]
        problem = await response.json()
        assert problem["type"] == problem_type("rate-limited")
        assert problem["retry_after"] == int(response.headers["Retry-After"])
    assert len(echo_upstream.seen) == 2


async def test_a_route_policy_by_user_counts_each_user_apart(
    gateway: GatewayFactory, store_url: str, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    gw = await gateway(ROUTES + limits(), state_url=store_url)
    alice, bob = (
        mint(issuer, "acme", ["clerk"], user_id="alice"),
        mint(issuer, "acme", ["clerk"], user_id="bob"),
    )
    for _ in range(2):
        async with gw.client.get("/api/orders", headers=bearer(alice)) as response:
            assert response.status == 200
            assert response.headers["RateLimit-Policy"]  # every answer of a route with a policy
            assert response.headers["RateLimit"]
    async with gw.client.get("/api/orders", headers=bearer(alice)) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        assert (await response.json())["type"] == problem_type("rate-limited")
    async with gw.client.get("/api/orders", headers=bearer(bob)) as response:
        assert response.status == 200
    assert len(echo_upstream.seen) == 3


async def test_a_login_username_is_locked_after_its_failures(
    gateway: GatewayFactory, store_url: str, echo_upstream: EchoUpstream
) -> None:
    gw = await gateway(ROUTES + limits(), state_url=store_url)
    echo_upstream.status = 401  # the upstream refuses the password
    for _ in range(2):
        async with gw.client.post("/login", json={"username": "Victim", "password": "guess"}) as response:
            assert response.status == 401
    # Canonical usernames: an alias of the same account is locked too; the upstream never sees it.
    echo_upstream.status = 200
    async with gw.client.post("/login", json={"username": " VICTIM ", "password": "right"}) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        problem = await response.json()
        assert problem["type"] == problem_type("locked-out")
    assert len(echo_upstream.seen) == 2
    # Another username from the same IP is not locked (the IP's threshold is 20).
    async with gw.client.post("/login", json={"username": "someone", "password": "pw"}) as response:
        assert response.status == 200
    assert len(echo_upstream.seen) == 3


async def test_a_successful_login_resets_the_usernames_failures(
    gateway: GatewayFactory, store_url: str, echo_upstream: EchoUpstream
) -> None:
    gw = await gateway(ROUTES + limits(), state_url=store_url)
    for status in (401, 200, 401):  # one failure, a success, one failure: never two in a row
        echo_upstream.status = status
        async with gw.client.post("/login", json={"username": "carol", "password": "pw"}) as response:
            assert response.status == status
    echo_upstream.status = 200
    async with gw.client.post("/login", json={"username": "carol", "password": "pw"}) as response:
        assert response.status == 200


@pytest.mark.parametrize(("mode", "status"), [("allow", 200), ("deny", 503)])
async def test_with_the_store_down_on_store_failure_decides(
    gateway: GatewayFactory,
    redis_server: RedisServer,
    issuer: DemoIssuer,
    echo_upstream: EchoUpstream,
    mode: str,
    status: int,
) -> None:
    gw = await gateway(ROUTES + limits(on_store_failure=mode), state_url=redis_server.url)
    token = mint(issuer, "acme", ["clerk"], user_id="alice")
    async with gw.client.get("/api/orders", headers=bearer(token)) as response:
        assert response.status == 200
    redis_server.stop()
    for _ in range(3):  # "allow": no limit at all while the store is down, not even per-user
        async with gw.client.get("/api/orders", headers=bearer(token)) as response:
            assert response.status == status
            if status == 503:
                assert (await response.json())["type"] == problem_type("store-unavailable")
            else:
                assert "RateLimit" not in response.headers
    assert len(echo_upstream.seen) == (4 if mode == "allow" else 1)
