"""The ``tenancy`` section and the route fields it adds: defaults, and errors by key path."""

from __future__ import annotations

import pytest
import yaml

from gateway.config.errors import ConfigError
from gateway.config_schema import parse_config

UPSTREAM = {"upstreams": {"erp": {"urls": ["http://127.0.0.1:9000"]}}}


def config_text(route: dict[str, object] | None = None, **top: object) -> str:
    base: dict[str, object] = {"name": "api", "prefix": "/t", "upstream": "erp"}
    base.update(route or {})
    return yaml.safe_dump({**UPSTREAM, "routes": [base], **top})


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.errors


def test_defaults() -> None:
    config = parse_config(config_text())
    assert config.tenancy.claim == "tid"
    assert config.tenancy.strip_set() == {"x-tenant-id", "x-user-id", "x-user-roles", "x-gateway-context"}
    route = config.routes[0]
    assert (route.roles, route.tenant_from, route.require_tenant_echo) == ((), None, False)


def test_builtin_headers_are_stripped_whatever_the_list_says() -> None:
    config = parse_config(config_text(tenancy={"claim": "org", "strip_headers": ["X-Org", "x-impersonate"]}))
    assert config.tenancy.claim == "org"
    assert config.tenancy.strip_set() == {
        "x-tenant-id", "x-user-id", "x-user-roles", "x-gateway-context", "x-org", "x-impersonate",
    }  # fmt: skip


def test_underscore_spellings_of_stripped_headers_are_stripped_too() -> None:
    # Regression: "X_Tenant_ID" reached the upstream, where CGI/WSGI servers read it as
    # HTTP_X_TENANT_ID, the same variable as the gateway's own X-Tenant-ID.
    stripped = parse_config(config_text(tenancy={"strip_headers": ["X-Acting_Tenant"]})).tenancy.strip_set()
    for name in ("x_tenant_id", "x-tenant_id", "x_gateway-context", "x_user_roles", "x-acting-tenant",
                 "x_acting_tenant"):  # fmt: skip
        assert name in stripped, name
    assert "x-tenantid" not in stripped and "x-request-id" not in stripped


def test_route_fields() -> None:
    route = parse_config(
        config_text(
            {
                "roles": ["finance", "tenant-admin"],
                "tenant_from": "path:/t/{tenant}/",
                "require_tenant_echo": True,
            }
        )
    ).routes[0]
    assert route.roles == ("finance", "tenant-admin")
    assert route.tenant_from == "path:/t/{tenant}/" and route.require_tenant_echo


@pytest.mark.parametrize(
    ("route", "top", "expected"),
    [
        (
            {"tenant_from": "path:/t/"},
            {},
            "routes[0].tenant_from: the template must contain {tenant} exactly once",
        ),
        (
            {"tenant_from": "path:/t/{tenant}/{tenant}"},
            {},
            "routes[0].tenant_from: the template must contain",
        ),
        ({"tenant_from": "cookie:{tenant}"}, {}, 'routes[0].tenant_from: expected "path:'),
        ({"tenant_from": "host:{tenant}.x.com:80"}, {}, "routes[0].tenant_from: a host template"),
        (
            {"tenant_from": "path:/api/{tenant}/"},
            {},
            "routes[0].tenant_from: the template never matches paths under /t",
        ),
        ({"roles": "admin"}, {}, "routes[0].roles: expected a list of strings"),
        ({"roles": ["a,b"]}, {}, "routes[0].roles[0]: expected a role name"),
        ({"require_tenant_echo": "yes"}, {}, "routes[0].require_tenant_echo: expected true or false"),
        ({"auth": "none", "roles": ["x"]}, {}, "routes[0].roles: only routes with auth: jwt"),
        (
            {"auth": "none", "tenant_from": "path:/t/{tenant}/"},
            {},
            "routes[0].tenant_from: only routes with auth: jwt",
        ),
        (
            {"auth": "none", "require_tenant_echo": True},
            {},
            "routes[0].require_tenant_echo: only routes with",
        ),
        ({}, {"tenancy": {"strip_headers": ["X Bad"]}}, "tenancy.strip_headers[0]: expected a header name"),
        ({}, {"tenancy": {"claim": ""}}, "tenancy.claim: expected a claim name"),
        ({}, {"tenancy": {"claim": 5}}, "tenancy.claim: expected a string"),
        ({}, {"tenancy": {"strip": []}}, "tenancy.strip: unknown key"),
    ],
)
def test_errors_by_key_path(route: dict[str, object], top: dict[str, object], expected: str) -> None:
    errors = errors_of(config_text(route, **top))
    assert any(e.startswith(expected) for e in errors), errors


ISSUERS = {
    "issuers": [
        {"issuer": f"https://{name}.example", "audience": "erp", "jwks_file": "/k"}
        for name in ("id", "partner")
    ]
}


def test_support_identities_default_to_the_first_issuer() -> None:
    support = parse_config(config_text(auth=ISSUERS)).tenancy.support
    assert (support.tenant, support.issuers) == ("shopino-support", ("https://id.example",))
    assert parse_config(config_text()).tenancy.support.issuers == ()  # no issuer: no support identity
    given = {"support": {"tenant": "helpdesk", "issuers": ["https://partner.example", "https://id.example"]}}
    support = parse_config(config_text(auth=ISSUERS, tenancy=given)).tenancy.support
    assert (support.tenant, support.issuers) == (
        "helpdesk",
        ("https://partner.example", "https://id.example"),
    )


@pytest.mark.parametrize(
    ("support", "expected"),
    [
        (
            {"issuers": ["https://other.example"]},
            "tenancy.support.issuers[0]: 'https://other.example' is not one",
        ),
        (
            {"issuers": ["https://id.example", "https://gateway.shopino.example"]},
            "tenancy.support.issuers[1]: 'https://gateway.shopino.example' is not one of auth.issuers",
        ),
        ({"issuers": "https://id.example"}, "tenancy.support.issuers: expected a list of strings"),
        ({"tenant": ""}, "tenancy.support.tenant: expected a non-empty tenant id"),
        ({"tenant": "_system"}, "tenancy.support.tenant: expected a non-empty tenant id"),
        ({"tenant": 7}, "tenancy.support.tenant: expected a string"),
        ({"tenants": ["a"]}, "tenancy.support.tenants: unknown key"),
    ],
)
def test_support_identities_are_checked(support: dict[str, object], expected: str) -> None:
    errors = errors_of(config_text(auth=ISSUERS, tenancy={"support": support}))
    assert any(e.startswith(expected) for e in errors), errors


def test_shipped_config_has_tenancy() -> None:
    from gateway.config_schema import load_config
    from gateway.demo.command import shipped_config_path

    config = load_config(shipped_config_path())
    routes = {r.name: r for r in config.routes}
    assert routes["finance"].roles and routes["finance"].require_tenant_echo
    assert routes["tenant-inventory"].tenant_from == "path:/t/{tenant}/"


async def test_tenant_claim_feeds_both_verifiers(tmp_path) -> None:
    from gateway.auth.jwt import TokenRejected
    from gateway.demo.identities import make_user
    from gateway.demo.issuer import DemoIssuer
    from gateway.runtime import build_admin_verifier, build_verifier

    issuer = DemoIssuer(tenant_claim="org")
    jwks = issuer.write_jwks(tmp_path / "idp.jwks")
    text = yaml.safe_dump(
        {
            **UPSTREAM,
            "routes": [{"name": "api", "prefix": "/api", "upstream": "erp"}],
            "auth": {
                "issuers": [{"issuer": issuer.issuer, "audience": issuer.audience, "jwks_file": str(jwks)}]
            },
            "admin": {"jwt_issuers": [issuer.issuer]},
            "tenancy": {"claim": "org"},
        }
    )
    config = parse_config(text)
    user = make_user("alice", "acme", ("gateway-admin",), "pw-alice-123")
    org_token = issuer.mint(user)
    tid_only = DemoIssuer(private_key=issuer._key).mint(user)  # same key, tenant under "tid"
    admin_verifier = build_admin_verifier(config)
    assert admin_verifier is not None
    for verifier in (build_verifier(config, None), admin_verifier):
        assert (await verifier.verify(org_token)).tenant == "acme"
        with pytest.raises(TokenRejected) as caught:
            await verifier.verify(tid_only)
        assert caught.value.reason == "missing_claim"
