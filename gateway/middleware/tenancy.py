"""SPEC §3.6 / §7: the acting tenant, route roles and support grants; the identity the upstream
sees; and the response check that withholds another tenant's data.

Who may act where is decided by ``gateway.tenancy.policy`` (the rules and their reasons), and
``gateway.tenancy.records`` files the audit records; this stage applies the decisions (the
acting tenant and grant on the context, the refusals) and chooses what a failed record means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, istr

from gateway.auth.bearer import invalid_token
from gateway.auth.jwt import VerifiedClaims
from gateway.context import RequestContext
from gateway.errors import Forbidden, StoreUnavailable, TenantLeakBlocked, TenantMismatch
from gateway.logs import context as log_context
from gateway.metrics import METRICS
from gateway.tenancy import context as signed_context
from gateway.tenancy.grants import SUPPORT_ROLE, Grant
from gateway.tenancy.policy import REVOKED, identity_ok, named_tenant, roles_allow, support_grant
from gateway.tenancy.records import record_grant_use, record_leak, record_mismatch
from gateway.tenancy.resolve import TenantNotNamed

log = structlog.get_logger("gateway.tenancy")
# istr: multidict keeps their case-folded form, so adding them costs no case folding per request.
TENANT_HEADER = istr(signed_context.TENANT_HEADER)
USER_HEADER = istr(signed_context.USER_HEADER)
ROLES_HEADER = istr(signed_context.ROLES_HEADER)
CONTEXT_HEADER = istr(signed_context.CONTEXT_HEADER)


async def apply_tenancy(ctx: RequestContext) -> web.StreamResponse | None:
    route, claims = ctx.route, ctx.claims
    if route is None or route.auth != "jwt" or claims is None:
        return None  # auth: none / webhook: no identity, nothing to check
    assert ctx.target is not None
    if not identity_ok(claims.tenant, claims.subject, claims.roles):
        METRICS.auth_failures.labels("bad_identity").inc()
        raise invalid_token()
    own = claims.tenant
    template = ctx.runtime.tenant_templates.get(route.name)
    named: str | None = None
    if template is not None:
        try:
            named = named_tenant(template, ctx.target.path, ctx.request.host, own)
        except TenantNotNamed:
            await _refuse_mismatch(ctx, own, None)
    if named is None:
        ctx.tenant = own
        if route.roles and not _roles_allow(ctx, route.roles, claims):
            METRICS.auth_failures.labels("role_missing").inc()
            raise Forbidden("Your roles do not allow this route")
        return None
    config, services = ctx.runtime.config, ctx.runtime.services
    grant = support_grant(
        claims,
        named,
        route.module,
        support=config.tenancy.support,
        issuer=config.mfa.issuer,
        grants=services.grants,
        revocations=services.revocations,
    )
    if grant == REVOKED:
        METRICS.auth_failures.labels("revoked").inc()
        raise invalid_token()
    if grant is None:
        await _refuse_mismatch(ctx, own, named)
    _act_under_grant(ctx, claims, named, grant)
    return None


def _roles_allow(ctx: RequestContext, roles: tuple[str, ...], claims: VerifiedClaims) -> bool:
    config = ctx.runtime.config
    return roles_allow(roles, claims, config.tenancy.support, config.mfa.issuer)


def _act_under_grant(ctx: RequestContext, claims: VerifiedClaims, tenant: str, grant: Grant) -> None:
    ctx.tenant, ctx.grant = tenant, grant
    log_context.bind(tenant=tenant)
    if not record_grant_use(ctx.runtime.services.audit, ctx, claims, tenant, grant):
        # SECURITY: support access that cannot be accounted for is not granted (fail closed).
        log.error("grant_audit_failed", request_id=ctx.request_id)
        raise StoreUnavailable("Support access cannot be audited right now")


async def _refuse_mismatch(ctx: RequestContext, own: str, named: str | None) -> NoReturn:
    METRICS.auth_failures.labels("tenant_mismatch").inc()
    if not record_mismatch(ctx.runtime.services.audit, ctx, own, named):
        log.error("tenant_mismatch_audit_failed", request_id=ctx.request_id)
    raise TenantMismatch("This request names a tenant your token does not act for")


def inject_identity(ctx: RequestContext, headers: CIMultiDict[str]) -> None:
    """SPEC §7: the acting identity and its signed context, for ``auth: jwt`` routes only."""
    claims, tenant = ctx.claims, ctx.tenant
    if claims is None or tenant is None or ctx.route is None or ctx.route.auth != "jwt":
        return
    assert ctx.target is not None
    # SECURITY: a token's roles hold in the token's own tenant. Acting in another tenant under a
    # grant, a support user is "support" there and nothing more: a "tenant-admin" or "finance"
    # role from the support organisation's tenant must not reach the granting tenant's backend.
    roles = SUPPORT_ROLE if ctx.grant is not None else claims.roles_text
    user = claims.subject
    signed = ctx.runtime.services.context_keys.signer.sign_joined(
        ctx.request.method, ctx.target.upstream_target, tenant, user, roles, ctx.request_id
    )
    # Added, not set: ``headers`` comes from upstream_request_headers(drop=runtime.strip_headers),
    # which removed every client copy of these four names (they are always in that set).
    headers.extend(
        ((TENANT_HEADER, tenant), (USER_HEADER, user), (ROLES_HEADER, roles), (CONTEXT_HEADER, signed))
    )


async def check_tenant_echo(
    ctx: RequestContext, status: int, headers: CIMultiDict[str] | CIMultiDictProxy[str]
) -> None:
    """SPEC §7 response check: an upstream answer for another tenant never reaches the client."""
    route, tenant = ctx.route, ctx.tenant
    if route is None or route.auth != "jwt" or tenant is None:
        return
    echoes: Sequence[str] = headers.getall(TENANT_HEADER, ())
    if not echoes:
        if route.require_tenant_echo:
            await _block_leak(ctx, status, "missing", ())
        return
    if any(echo != tenant for echo in echoes):
        await _block_leak(ctx, status, "mismatch", echoes)


async def _block_leak(ctx: RequestContext, status: int, reason: str, echoes: Sequence[str]) -> None:
    assert ctx.route is not None
    log.warning("tenant_leak_blocked", reason=reason, route=ctx.route.name, upstream_status=status)
    if not record_leak(ctx.runtime.services.audit, ctx, reason, echoes, status):
        log.error("tenant_leak_audit_failed", request_id=ctx.request_id)
    raise TenantLeakBlocked(
        "The upstream's answer did not carry the request's tenant; it was withheld"
        if reason == "missing"
        else "The upstream answered for another tenant; its response was withheld"
    )
