"""The ``tenancy`` section builder, the route fields it adds, and their cross-checks (called
by ``gateway.config_schema``)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.audit.record import TENANT_ID_RE
from gateway.config.model import RouteConfig
from gateway.config.reader import Node, Report
from gateway.tenancy.model import BUILTIN_STRIP_HEADERS, DEFAULT_SUPPORT_TENANT, SupportConfig, TenancyConfig
from gateway.tenancy.resolve import compile_tenant_from, covers_route

_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")  # an RFC 9110 token
_CLAIM_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
_ROLE_RE = re.compile(r"[^\x00-\x20,\x7f]{1,64}")  # no space, comma or control: X-User-Roles is a comma list


def build_tenancy(node: Node, auth_issuers: tuple[str, ...]) -> TenancyConfig:
    """``auth_issuers``: the ``issuer`` values of ``auth.issuers``, in order (support issuers
    must be among them; the first is the default)."""
    claim = node.string("claim", "tid")
    if isinstance(claim, str) and not _CLAIM_RE.fullmatch(claim):
        node.report.error(node.child_path("claim"), "expected a claim name like tid")
    headers = node.string_list("strip_headers", BUILTIN_STRIP_HEADERS)
    for index, name in enumerate(headers):
        if not _HEADER_RE.fullmatch(name):
            node.report.error(f"{node.child_path('strip_headers')}[{index}]", "expected a header name")
    support = _support(node.child("support"), auth_issuers)
    node.done()
    return TenancyConfig(claim=claim or "tid", strip_headers=headers, support=support)


def _support(node: Node, auth_issuers: tuple[str, ...]) -> SupportConfig:
    tenant = node.string("tenant", DEFAULT_SUPPORT_TENANT)
    if not (isinstance(tenant, str) and TENANT_ID_RE.fullmatch(tenant)):
        node.report.error(node.child_path("tenant"), "expected a non-empty tenant id")
        tenant = DEFAULT_SUPPORT_TENANT
    issuers = node.string_list("issuers", auth_issuers[:1])
    for index, issuer in enumerate(issuers):
        if issuer not in auth_issuers:
            # The keys of a support issuer are configured once, under auth.issuers.
            node.report.error(
                f"{node.child_path('issuers')}[{index}]", f"{issuer!r} is not one of auth.issuers"
            )
    node.done()
    return SupportConfig(tenant=tenant, issuers=tuple(i for i in issuers if i in auth_issuers))


def route_tenancy_fields(node: Node) -> dict[str, object]:
    """``roles``, ``tenant_from`` and ``require_tenant_echo`` of one route, validated."""
    roles = node.string_list("roles")
    for index, role in enumerate(roles):
        if not _ROLE_RE.fullmatch(role):
            node.report.error(f"{node.child_path('roles')}[{index}]", "expected a role name")
    tenant_from = node.string("tenant_from", None)
    if tenant_from is not None:
        try:
            compile_tenant_from(tenant_from)
        except ValueError as exc:
            node.report.error(node.child_path("tenant_from"), str(exc))
            tenant_from = None
    return {
        "roles": roles,
        "tenant_from": tenant_from,
        "require_tenant_echo": node.boolean("require_tenant_echo", False),
    }


def check_tenancy_routes(routes: Sequence[RouteConfig], case_insensitive: bool, report: Report) -> None:
    for index, route in enumerate(routes):
        path = f"routes[{index}]"
        needs_identity = {
            "roles": bool(route.roles),
            "tenant_from": route.tenant_from is not None,
            "require_tenant_echo": route.require_tenant_echo,
        }
        for key, used in needs_identity.items():
            if used and route.auth != "jwt":
                report.error(f"{path}.{key}", "only routes with auth: jwt have a tenant and roles")
        if route.tenant_from is not None and route.prefix:
            template = compile_tenant_from(route.tenant_from)
            if not covers_route(template, route.prefix, case_insensitive):
                report.error(f"{path}.tenant_from", f"the template never matches paths under {route.prefix}")
