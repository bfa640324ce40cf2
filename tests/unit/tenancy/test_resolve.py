"""``tenant_from`` templates: validated at load, compiled once, matched per request."""

from __future__ import annotations

import pytest

from gateway.tenancy.resolve import TenantNotNamed, compile_tenant_from, covers_route


@pytest.mark.parametrize(
    ("path", "tenant"),
    [("/t/acme/", "acme"), ("/t/acme", "acme"), ("/t/acme/api/items", "acme"), ("/t/Acme_2/x", "Acme_2")],
)
def test_path_template(path: str, tenant: str) -> None:
    assert compile_tenant_from("path:/t/{tenant}/").tenant_of(path, None) == tenant


# "/t/_system/x": regression, the gateway's own audit trail name was accepted as a tenant.
@pytest.mark.parametrize(
    "path", ["/t", "/t/", "/x/acme/", "/tt/acme", "/t/.hidden/x", "/t/-x/y", "/t/_system/x"]
)
def test_path_without_a_valid_tenant(path: str) -> None:
    with pytest.raises(TenantNotNamed):
        compile_tenant_from("path:/t/{tenant}/").tenant_of(path, None)


def test_path_template_with_a_suffix_and_case_folding() -> None:
    template = compile_tenant_from("path:/orgs/{tenant}/api/", case_insensitive=True)
    assert template.tenant_of("/ORGS/Acme/API/items", None) == "Acme"
    with pytest.raises(TenantNotNamed):
        template.tenant_of("/orgs/acme/apix", None)
    with pytest.raises(TenantNotNamed):
        compile_tenant_from("path:/orgs/{tenant}/api/").tenant_of("/ORGS/acme/api", None)


@pytest.mark.parametrize(
    ("host", "tenant"),
    [("acme.erp.example.com", "acme"), ("ACME.Erp.Example.com:8443", "acme"), ("a-1.erp.example.com", "a-1")],
)
def test_host_template(host: str, tenant: str) -> None:
    assert compile_tenant_from("host:{tenant}.erp.example.com").tenant_of("/", host) == tenant


@pytest.mark.parametrize(
    "host", [None, "erp.example.com", "a.b.erp.example.com", "acme.erp.example.com.evil", "[::1]:80", "x"]
)
def test_host_without_a_tenant(host: str | None) -> None:
    with pytest.raises(TenantNotNamed):
        compile_tenant_from("host:{tenant}.erp.example.com").tenant_of("/", host)


@pytest.mark.parametrize(
    "spec",
    [
        "/t/{tenant}/",
        "query:{tenant}",
        "path:/t/",
        "path:/t/{tenant}/{tenant}/",
        "path:t/{tenant}/",
        "path:/t/{tenant}/{user}",
        "path:/t//{tenant}",
        "host:{tenant}.erp.example.com:8443",
        "host:{tenant}",
        "host:{tenant}.erp_example.com",
    ],
)
def test_invalid_templates(spec: str) -> None:
    with pytest.raises(ValueError):
        compile_tenant_from(spec)


def test_covers_route() -> None:
    template = compile_tenant_from("path:/t/{tenant}/")
    assert covers_route(template, "/t")
    assert covers_route(template, "/")
    assert not covers_route(template, "/api")
    assert not covers_route(template, "/tt")
    assert covers_route(compile_tenant_from("host:{tenant}.x.com"), "/api")
