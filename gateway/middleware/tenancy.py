"""SPEC §3.6 / §7: the acting tenant, route roles and support grants; the identity the upstream
sees; and the response check that withholds another tenant's data.

Decisions (documented in the README):
* A route's ``roles`` are any-of against the token's roles. A support user acting under a grant
  is let through by the grant instead: a grant that covers the route's module satisfies the
  route's roles (the tenant admin chose to open that module). Routes without a ``module`` are
  never reachable under a grant.
* The ``support`` role counts only on support identities (Appendix C ``tenancy.support``: the
  support tenant, one of its issuers): elsewhere it neither opens a grant nor satisfies a
  route's ``roles``. A grant's grantee is a ``sub`` among those identities only.
* A request whose route has ``tenant_from`` but that names no (valid) tenant is refused like a
  mismatch: the route promised the tenant would be checked, and it cannot be.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

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
from gateway.tenancy.grants import SUPPORT_ROLE
from gateway.tenancy.resolve import TENANT_ID_RE, TenantNotNamed
from gateway.tenancy.support import is_support_identity, roles_that_count

log = structlog.get_logger("gateway.tenancy")
# SECURITY: identity values become upstream header values and MAC fields: no control characters
# (header injection, field confusion in the "\n"-joined MAC), no comma inside a role, no lone
# surrogates (not encodable as UTF-8: the MAC could not be computed), and no leading or trailing
# blank (HTTP strips it, so the backend would see another value than the one signed).
_USER_RE = re.compile(r"(?![ \t])[^\x00-\x1f\x7f\ud800-\udfff]{1,1024}(?<![ \t])")
_ROLE_RE = re.compile(r"(?![ \t])[^\x00-\x1f\x7f,\ud800-\udfff]{1,256}(?<![ \t])")
_MAX_CLAIMED = 4  # tenants named in one leak record (the upstream chooses them)
# istr: multidict keeps their case-folded form, so adding them costs no case folding per request.
TENANT_HEADER = istr(signed_context.TENANT_HEADER)
USER_HEADER = istr(signed_context.USER_HEADER)
ROLES_HEADER = istr(signed_context.ROLES_HEADER)
CONTEXT_HEADER = istr(signed_context.CONTEXT_HEADER)


@functools.lru_cache(maxsize=4096)
def _identity_ok(tenant: str, subject: str, roles: tuple[str, ...]) -> bool:
    # Cached: the same few identities come back on every request, and three regex scans per
    # request were a visible share of an authenticated request's cost.
    return bool(
        TENANT_ID_RE.fullmatch(tenant)
        and _USER_RE.fullmatch(subject)
        and all(_ROLE_RE.fullmatch(role) for role in roles)
    )


async def apply_tenancy(ctx: RequestContext) -> web.StreamResponse | None:
    route, claims = ctx.route, ctx.claims
    if route is None or route.auth != "jwt" or claims is None:
        return None  # auth: none / webhook: no identity, nothing to check
    assert ctx.target is not None
    if not _identity_ok(claims.tenant, claims.subject, claims.roles):
        METRICS.auth_failures.labels("bad_identity").inc()
        raise invalid_token()
    own = claims.tenant
    template = ctx.runtime.tenant_templates.get(route.name)
    named: str | None = None
    if template is not None:
        try:
            named = template.tenant_of(ctx.target.path, ctx.request.host)
        except TenantNotNamed:
            await _refuse_mismatch(ctx, own, None)
        # Host names are case-insensitive: a host template yields a lower-case tenant.
        if named == (own.lower() if template.kind == "host" else own):
            named = None
    if named is None:
        ctx.tenant = own
        if route.roles and set(route.roles).isdisjoint(_roles_that_count(ctx, claims)):
            METRICS.auth_failures.labels("role_missing").inc()
            raise Forbidden("Your roles do not allow this route")
        return None
    if _is_support_identity(ctx, claims) and await _act_under_grant(ctx, claims, named):
        return None
    await _refuse_mismatch(ctx, own, named)
    return None  # not reached: _refuse_mismatch raises


def _is_support_identity(ctx: RequestContext, claims: VerifiedClaims) -> bool:
    config = ctx.runtime.config
    return is_support_identity(claims, config.tenancy.support, config.mfa.issuer)


def _roles_that_count(ctx: RequestContext, claims: VerifiedClaims) -> tuple[str, ...]:
    config = ctx.runtime.config
    return roles_that_count(claims, config.tenancy.support, config.mfa.issuer)


async def _act_under_grant(ctx: RequestContext, claims: VerifiedClaims, tenant: str) -> bool:
    """True when an active grant of ``tenant`` lets this support user act there (audited)."""
    assert ctx.route is not None and ctx.target is not None
    services = ctx.runtime.services
    grant = services.grants.find(tenant, claims.subject, ctx.route.module)
    if grant is None:
        return False
    # SECURITY: a tenant-wide (or per-user) revocation in the granting tenant stops support
    # users acting there too, whatever their own tenant says.
    if services.revocations.is_revoked(tenant, claims.subject, claims.issued_at):
        METRICS.auth_failures.labels("revoked").inc()
        raise invalid_token()
    ctx.tenant, ctx.grant = tenant, grant
    log_context.bind(tenant=tenant)
    try:
        services.audit.submit(
            "grant.used",
            tenants=[tenant],
            actor=claims.subject,
            request_id=ctx.request_id,
            details={
                "grant": grant.id,
                "support_tenant": claims.tenant,
                "method": ctx.request.method,
                "path": ctx.target.path,
                "route": ctx.route.name,
                "module": ctx.route.module,
            },
        )
    except (OSError, ValueError):
        # SECURITY: support access that cannot be accounted for is not granted (fail closed).
        log.error("grant_audit_failed", request_id=ctx.request_id)
        raise StoreUnavailable("Support access cannot be audited right now") from None
    return True


async def _refuse_mismatch(ctx: RequestContext, own: str, named: str | None) -> None:
    assert ctx.route is not None and ctx.target is not None
    METRICS.auth_failures.labels("tenant_mismatch").inc()
    tenants = [own] if named is None else [own, named]  # App. B: both trails
    try:
        ctx.runtime.services.audit.submit(
            "tenant.mismatch",
            tenants=tenants,
            actor=ctx.user,
            request_id=ctx.request_id,
            details={
                "token_tenant": own,
                "requested_tenant": named,
                "method": ctx.request.method,
                "path": ctx.target.path,
                "route": ctx.route.name,
            },
        )
    except (OSError, ValueError):
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
    assert ctx.route is not None and ctx.target is not None and ctx.tenant is not None
    claimed = [e[:128] for e in echoes[:_MAX_CLAIMED]]
    others = [c for c in dict.fromkeys(claimed) if c != ctx.tenant and TENANT_ID_RE.fullmatch(c)]
    log.warning("tenant_leak_blocked", reason=reason, route=ctx.route.name, upstream_status=status)
    try:
        ctx.runtime.services.audit.submit(
            "tenant.leak_blocked",
            tenants=[ctx.tenant, *others],  # the acting tenant and whoever the data claims to be
            actor=ctx.user,
            request_id=ctx.request_id,
            details={
                "reason": reason,
                "claimed_tenants": claimed,
                "upstream_status": status,
                "method": ctx.request.method,
                "path": ctx.target.path,
                "route": ctx.route.name,
            },
        )
    except (OSError, ValueError):
        log.error("tenant_leak_audit_failed", request_id=ctx.request_id)
    raise TenantLeakBlocked(
        "The upstream's answer did not carry the request's tenant; it was withheld"
        if reason == "missing"
        else "The upstream answered for another tenant; its response was withheld"
    )
