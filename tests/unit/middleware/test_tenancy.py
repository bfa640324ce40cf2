"""SPEC §7: the tenancy stage, the identity header hook and the tenant echo check, in their
places in ``gateway.pipeline`` on a real runtime with real tokens and a real upstream: the
acting tenant is the token's, whatever the client claims (its identity headers never reach
the upstream); a path naming another tenant is 403 ``tenant-mismatch``; route roles are
any-of (403 ``forbidden``); the upstream gets the identity with a context MAC it can verify;
an answer for another tenant (or none, where an echo is required) is withheld (502)."""

from __future__ import annotations

import inspect

import pytest
from multidict import CIMultiDict

from gateway.demo.issuer import DemoIssuer
from gateway.middleware.tenancy import apply_tenancy, inject_identity
from gateway.middleware.tenant_echo import check_tenant_echo
from gateway.pipeline import PIPELINE, RESPONSE_CHECKS, UPSTREAM_HEADER_HOOKS
from gateway.tenancy import ContextInvalid, verify_context
from gateway.upstream.forwarding import HOP_BY_HOP, never_forwarded_names
from tests.support.stage_server import problem_type
from tests.unit.middleware.conftest import EchoUpstream, Gateway, GatewayFactory, bearer, mint

CONFIG = (
    "routes:\n"
    "  - {name: api, prefix: /api, upstream: erp}\n"
    "  - {name: finance, prefix: /finance, upstream: erp, roles: [finance, tenant-admin]}\n"
    "  - {name: customers, prefix: /customers, upstream: erp, require_tenant_echo: true}\n"
    "  - {name: tenant-api, prefix: /t, upstream: erp, tenant_from: 'path:/t/{tenant}/'}\n"
    "  - {name: public, prefix: /public, upstream: erp, auth: none}\n"
)
IDENTITY = ("X-Tenant-ID", "X-User-ID", "X-User-Roles", "X-Gateway-Context")
SPOOFED = [
    ("X-Tenant-ID", "globex"),
    ("x-tenant-id", "initech"),
    ("X_Tenant_ID", "umbrella"),  # read as X-Tenant-ID by CGI/WSGI backends
    ("X-User-ID", "root"),
    ("X-User-Roles", "tenant-admin"),
    ("X-Gateway-Context", "v1.1.forged"),
]


def test_the_stages_run_in_the_pipeline() -> None:
    assert apply_tenancy in PIPELINE
    assert inject_identity in UPSTREAM_HEADER_HOOKS
    assert check_tenant_echo in RESPONSE_CHECKS


async def test_the_runtime_drops_every_identity_header_and_hop_by_hop_name(gw: Gateway) -> None:
    """SECURITY: the set the proxy drops by is built once per runtime; it must hold every
    client identity header (tenancy.strip_headers) and every hop-by-hop name."""
    runtime = gw.runtime
    assert runtime.never_forwarded == never_forwarded_names(runtime.strip_headers)
    assert {name.lower() for name in IDENTITY} <= runtime.never_forwarded
    assert runtime.never_forwarded >= HOP_BY_HOP


def test_the_echo_check_never_waits() -> None:
    """A plain function, as gateway.proxy.ResponseCheck allows: no coroutine per answer (the
    withheld answers below show it still refuses by raising)."""
    assert not inspect.iscoroutinefunction(check_tenant_echo)


@pytest.fixture
async def gw(gateway: GatewayFactory) -> Gateway:
    return await gateway(CONFIG)


def identity_seen(upstream: EchoUpstream) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in upstream.headers():
        canonical = name.lower().replace("_", "-")
        for wanted in IDENTITY:
            if canonical == wanted.lower():
                seen.setdefault(wanted, []).append(value)
    return seen


async def test_the_acting_tenant_is_the_tokens_and_client_identity_headers_never_arrive(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    token = mint(issuer, "acme", ["clerk", "buyer"], user_id="alice")
    headers = CIMultiDict([*bearer(token).items(), *SPOOFED])
    async with gw.client.get("/api/orders?page=2", headers=headers) as response:
        assert response.status == 200
        request_id = response.headers["X-Request-ID"]
    seen = identity_seen(echo_upstream)
    assert seen["X-Tenant-ID"] == ["acme"]
    assert seen["X-User-ID"] == ["alice"]
    assert seen["X-User-Roles"] == ["clerk,buyer"]
    assert len(seen["X-Gateway-Context"]) == 1
    # The upstream can check who acts: the MAC covers method, target, tenant, user, roles, id.
    forwarded = CIMultiDict(echo_upstream.headers())
    keys = gw.runtime.services.context_keys.verification_keys()
    verified = verify_context(forwarded, "GET", "/api/orders?page=2", keys)
    assert (verified.tenant, verified.user, verified.request_id) == ("acme", "alice", request_id)
    with pytest.raises(ContextInvalid):  # bound to the target: not replayable elsewhere
        verify_context(forwarded, "GET", "/api/admin", keys)


@pytest.mark.parametrize(
    ("tenant", "roles", "user"),
    [
        ("acme", ["clerk,tenant-admin"], "alice"),  # one role that reads as two upstream
        ("acme,globex", ["clerk"], "alice"),  # a tenant that reads as two
        ("acme", ["clerk"], "alice\r\nX-Tenant-ID: globex"),  # header injection
        ("", ["clerk"], "alice"),
    ],
)
async def test_a_signed_identity_that_cannot_be_a_header_safely_is_refused(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream, tenant: str, roles: list[str], user: str
) -> None:
    token = mint(issuer, tenant, roles, user_id=user)
    for _ in range(2):  # and again with the token cached (its identity's check is kept with it)
        async with gw.client.get("/api/orders", headers=bearer(token)) as response:
            assert response.status == 401
            assert (await response.json())["type"] == problem_type("invalid-token")
    assert echo_upstream.seen == []


async def test_each_request_of_a_cached_token_gets_its_own_signed_context(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    """The identity headers are derived once per token; the context MAC is still made per
    request, over that request's method, target and id (and time)."""
    token = mint(issuer, "acme", ["clerk"], user_id="alice")
    keys = gw.runtime.services.context_keys.verification_keys()
    sent = []
    for method, target in (("GET", "/api/orders?page=1"), ("POST", "/api/orders"), ("GET", "/api/x")):
        async with gw.client.request(method, target, headers=bearer(token)) as response:
            assert response.status == 200
            sent.append((method, target, response.headers["X-Request-ID"]))
    contexts = set()
    for (method, target, request_id), seen in zip(sent, echo_upstream.seen, strict=True):
        forwarded = CIMultiDict(seen[2])
        verified = verify_context(forwarded, method, target, keys)
        assert (verified.tenant, verified.user, verified.roles) == ("acme", "alice", ("clerk",))
        assert verified.request_id == request_id
        contexts.add(forwarded["X-Gateway-Context"])
        for other_method, other_target, _ in sent:
            if (other_method, other_target) != (method, target):
                with pytest.raises(ContextInvalid):
                    verify_context(forwarded, other_method, other_target, keys)
    assert len(contexts) == 3


async def test_an_auth_none_route_gets_no_identity_and_none_of_the_clients(
    gw: Gateway, echo_upstream: EchoUpstream
) -> None:
    async with gw.client.get("/public/catalogue", headers=CIMultiDict(SPOOFED)) as response:
        assert response.status == 200
    assert identity_seen(echo_upstream) == {}


async def test_a_path_naming_the_tokens_tenant_passes(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    token = mint(issuer, "acme", ["clerk"])
    async with gw.client.get("/t/acme/orders", headers=bearer(token)) as response:
        assert response.status == 200
    assert identity_seen(echo_upstream)["X-Tenant-ID"] == ["acme"]


@pytest.mark.parametrize("target", ["/t/globex/orders", "/t/ACME/orders", "/t/"])
async def test_a_path_naming_another_tenant_is_refused(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream, target: str
) -> None:
    token = mint(issuer, "acme", ["clerk", "tenant-admin"])
    async with gw.client.get(target, headers=bearer(token)) as response:
        assert response.status == 403
        assert (await response.json())["type"] == problem_type("tenant-mismatch")
    assert echo_upstream.seen == []


async def test_a_support_role_alone_opens_no_other_tenant(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    # "support" counts only under a grant, and only for the support tenant's identities.
    token = mint(issuer, "acme", ["support"])
    async with gw.client.get("/t/globex/orders", headers=bearer(token)) as response:
        assert response.status == 403
        assert (await response.json())["type"] == problem_type("tenant-mismatch")
    assert echo_upstream.seen == []


@pytest.mark.parametrize(
    ("roles", "status"), [(["clerk"], 403), ([], 403), (["finance"], 200), (["x", "tenant-admin"], 200)]
)
async def test_route_roles_are_any_of(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream, roles: list[str], status: int
) -> None:
    token = mint(issuer, "acme", roles)
    async with gw.client.get("/finance/ledger", headers=bearer(token)) as response:
        assert response.status == status
        if status == 403:
            assert (await response.json())["type"] == problem_type("forbidden")
    assert len(echo_upstream.seen) == (status == 200)


async def test_client_role_headers_do_not_satisfy_route_roles(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    token = mint(issuer, "acme", ["clerk"])
    headers = {**bearer(token), "X-User-Roles": "finance"}
    async with gw.client.get("/finance/ledger", headers=headers) as response:
        assert response.status == 403
    assert echo_upstream.seen == []


@pytest.mark.parametrize("route", ["/api/orders", "/customers/7"])
async def test_an_answer_for_another_tenant_is_withheld(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream, route: str
) -> None:
    echo_upstream.answer_headers = {"X-Tenant-ID": "globex"}
    token = mint(issuer, "acme", ["clerk"])
    async with gw.client.get(route, headers=bearer(token)) as response:
        assert response.status == 502
        problem = await response.json()
        assert problem["type"] == problem_type("tenant-leak-blocked")
        assert "ok" not in problem  # not one byte of the upstream's body
        assert response.headers.get("X-Tenant-ID") is None
    assert len(echo_upstream.seen) == 1


async def test_an_answer_echoing_the_acting_tenant_is_delivered(
    gw: Gateway, issuer: DemoIssuer, echo_upstream: EchoUpstream
) -> None:
    echo_upstream.answer_headers = {"X-Tenant-ID": "acme"}
    token = mint(issuer, "acme", ["clerk"])
    async with gw.client.get("/customers/7", headers=bearer(token)) as response:
        assert response.status == 200
        assert await response.json() == {"ok": True}


async def test_a_missing_echo_is_withheld_only_where_the_route_requires_one(
    gw: Gateway, issuer: DemoIssuer
) -> None:
    token = mint(issuer, "acme", ["clerk"])
    async with gw.client.get("/customers/7", headers=bearer(token)) as response:
        assert response.status == 502
        assert (await response.json())["type"] == problem_type("tenant-leak-blocked")
    async with gw.client.get("/api/orders", headers=bearer(token)) as response:
        assert response.status == 200
