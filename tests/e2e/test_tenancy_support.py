"""Appendix C through a real gateway: support identities (``tenancy.support``: the ``support``
role and a grant count only for tokens of the support tenant from its issuers) and tenant
isolation of the gateway's own endpoints (grants, MFA, the tenant's audit export)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from gateway.demo.issuer import DemoIssuer
from tests.e2e import killswitch_helpers as switches
from tests.support.gateway_proc import GatewayProc, running_gateway
from tests.support.mfa_flow import gateway_mfa_token
from tests.support.tenancy import AUD, ISS, TenantUpstream, token

PARTNER = "https://login.partner.test"
SUPPORT_TENANT = "acme-support"  # not the default: the config key is what decides


@pytest.fixture(scope="module")
def issuers() -> dict[str, DemoIssuer]:
    return {"main": DemoIssuer(issuer=ISS, audience=AUD), "partner": DemoIssuer(issuer=PARTNER, audience=AUD)}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, issuers: dict[str, DemoIssuer]) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("support")
    upstream = TenantUpstream().start()
    config = {
        "auth": {
            "issuers": [
                {"issuer": i.issuer, "audience": AUD, "jwks_file": str(i.write_jwks(tmp / f"{name}.json"))}
                for name, i in issuers.items()
            ]
        },
        "tenancy": {"support": {"tenant": SUPPORT_TENANT}},  # issuers: the first of auth.issuers
        "upstreams": {"app": {"urls": [upstream.url]}},
        "routes": [
            {"name": "t", "prefix": "/t", "upstream": "app", "module": "inventory",
             "tenant_from": "path:/t/{tenant}/"},
            {"name": "own", "prefix": "/own", "upstream": "app", "roles": ["support"]},
        ],
    }  # fmt: skip
    with running_gateway(tmp, config, upstream) as proc:
        yield proc


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, tok: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, url, headers=bearer(tok), json=body) as r:
        data = await r.read()
        is_json = r.content_type.endswith("json") and data.startswith(b"{")
        return r.status, (await r.json(content_type=None)) if is_json else {}


async def grant(
    http: aiohttp.ClientSession, gw: GatewayProc, issuer: DemoIssuer, tenant: str, grantee: str = "sam"
) -> str:
    admin = token(issuer, "admin", tenant, ("tenant-admin",))
    body = {"grantee": grantee, "modules": ["inventory"], "ttl": "1h"}
    status, created = await call(http, "POST", f"{gw.url}/_gateway/grants", admin, body)
    assert status == 201, created
    return str(created["id"])


# -- support identities ---------------------------------------------------------------------------


async def test_a_grant_serves_only_the_support_tenants_own_issuer(
    gw: GatewayProc, http: aiohttp.ClientSession, issuers: dict[str, DemoIssuer]
) -> None:
    main, partner = issuers["main"], issuers["partner"]
    await grant(http, gw, main, "acme")
    url = f"{gw.url}/t/acme/stock"
    # SECURITY: the grantee's sub with the support role, but from another tenant (an ordinary
    # customer's token) or from the partner issuer (which may mint any tenant) gets nothing.
    other_tenant = token(main, "sam", "globex", ("support",))
    other_issuer = token(partner, "sam", SUPPORT_TENANT, ("support",), iss=PARTNER)
    default_tenant = token(main, "sam", "shopino-support", ("support",))  # not the configured one
    for forged in (other_tenant, other_issuer, default_tenant):
        status, problem = await call(http, "GET", url, forged)
        assert (status, problem.get("type")) == (403, "urn:shopino-gateway:tenant-mismatch")
    status, _ = await call(http, "GET", url, token(main, "sam", SUPPORT_TENANT, ("support",)))
    assert status == 200


async def test_the_support_role_counts_only_on_support_identities(
    gw: GatewayProc, http: aiohttp.ClientSession, issuers: dict[str, DemoIssuer]
) -> None:
    main, partner = issuers["main"], issuers["partner"]
    status, _ = await call(http, "GET", f"{gw.url}/own/x", token(main, "sam", SUPPORT_TENANT, ("support",)))
    assert status == 200
    for tok in (
        token(main, "eve", "globex", ("support",)),
        token(partner, "sam", SUPPORT_TENANT, ("support",), iss=PARTNER),
    ):
        status, problem = await call(http, "GET", f"{gw.url}/own/x", tok)
        assert (status, problem.get("type")) == (403, "urn:shopino-gateway:forbidden")


async def test_the_gateways_mfa_token_keeps_the_support_users_issuer(
    gw: GatewayProc, http: aiohttp.ClientSession, issuers: dict[str, DemoIssuer]
) -> None:
    # A support user's second factor is often the gateway's own TOTP step, whose token is issued
    # by the gateway: it must still count for the main issuer's user, and must not launder the
    # partner issuer's "support" token into one that counts.
    main, partner = issuers["main"], issuers["partner"]
    for grantee in ("sam", "pat"):
        await grant(http, gw, main, "wayne", grantee)
    sam = await gateway_mfa_token(
        http, gw.url, token(main, "sam", SUPPORT_TENANT, ("support",), mfa_age=None)
    )
    status, _ = await call(http, "GET", f"{gw.url}/t/wayne/stock", sam)
    assert status == 200
    forged = token(partner, "pat", SUPPORT_TENANT, ("support",), mfa_age=None, iss=PARTNER)
    pat = await gateway_mfa_token(http, gw.url, forged)
    status, problem = await call(http, "GET", f"{gw.url}/t/wayne/stock", pat)
    assert (status, problem.get("type")) == (403, "urn:shopino-gateway:tenant-mismatch")


# -- isolation of /_gateway/* -----------------------------------------------------------------------


async def endpoint_answers(
    http: aiohttp.ClientSession, gw: GatewayProc, issuer: DemoIssuer, tenant: str
) -> dict[str, tuple[int, str | None]]:
    """Status and problem type of each tenant-acting endpoint, for ``tenant``'s admin."""
    admin = token(issuer, "admin", tenant, ("tenant-admin",))
    first_factor = token(issuer, "newbie", tenant, ("inventory",), mfa_age=None)
    calls = {
        "grant create": (
            "POST",
            "/_gateway/grants",
            admin,
            {"grantee": "sam", "modules": ["x"], "ttl": "1h"},
        ),
        "grant list": ("GET", "/_gateway/grants", admin, None),
        "grant revoke": ("DELETE", "/_gateway/grants/g_AAAAAAAAAAAAAAAAAAAAAA", admin, None),
        "mfa enroll": ("POST", "/_gateway/mfa/enroll", first_factor, None),
        "mfa verify": ("POST", "/_gateway/mfa/verify", first_factor, {"code": "000000"}),
        "audit export": ("GET", "/_gateway/audit?format=json", admin, None),
    }
    answers = {}
    for name, (method, path, tok, body) in calls.items():
        status, problem = await call(http, method, gw.url + path, tok, body)
        answers[name] = (status, problem.get("type"))
    return answers


ISOLATED = (503, "urn:shopino-gateway:isolated")


async def test_a_blocked_tenant_cannot_use_the_gateway_endpoints(
    gw: GatewayProc, http: aiohttp.ClientSession, issuers: dict[str, DemoIssuer]
) -> None:
    async with switches.engaged(http, gw, scope="tenant", target="initech", reason="e2e isolation"):
        answers = await endpoint_answers(http, gw, issuers["main"], "initech")
        assert answers == dict.fromkeys(answers, ISOLATED)
        others = await endpoint_answers(http, gw, issuers["main"], "umbrella")  # not isolated
        assert others["grant create"][0] == 201 and others["audit export"][0] == 200
        assert others["mfa enroll"][0] == 200 and ISOLATED not in others.values()
        for probe in ("/_gateway/health", "/_gateway/ready", "/.well-known/jwks.json"):
            async with http.get(gw.url + probe) as r:
                assert r.status == 200, probe
    assert (await endpoint_answers(http, gw, issuers["main"], "initech"))["audit export"][0] == 200


async def test_read_only_lets_the_tenants_reads_through(
    gw: GatewayProc, http: aiohttp.ClientSession, issuers: dict[str, DemoIssuer]
) -> None:
    async with switches.engaged(
        http, gw, scope="tenant", target="hooli", mode="read-only", reason="e2e isolation"
    ):
        answers = await endpoint_answers(http, gw, issuers["main"], "hooli")
    assert answers["audit export"][0] == 200 and answers["grant list"][0] == 200
    for write in ("grant create", "grant revoke", "mfa enroll", "mfa verify"):
        assert answers[write] == ISOLATED, write
