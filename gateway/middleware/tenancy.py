"""SPEC §3.6 / §7: the acting tenant, route roles and support grants, and the identity the
upstream sees (the header hook ``inject_identity``). The rules are ``gateway.tenancy.policy``,
the refusals ``gateway.tenancy.refusals``, the identity headers ``gateway.tenancy.identity``;
this stage sets the acting tenant and grant on the context. The echo check: ``tenant_echo.py``.
"""

from __future__ import annotations

from aiohttp import web

from gateway.auth.bearer import invalid_token
from gateway.context import RequestContext
from gateway.errors import Forbidden
from gateway.logs import context as log_context
from gateway.metrics import METRICS
from gateway.tenancy.identity import identity_headers, own_identity
from gateway.tenancy.policy import REVOKED, named_tenant, roles_allow, support_grant
from gateway.tenancy.refusals import account_grant_use, refuse_mismatch
from gateway.tenancy.resolve import TenantNotNamed
from gateway.upstream.forwarding import UpstreamHeaders


def apply_tenancy(ctx: RequestContext) -> web.StreamResponse | None:
    route, claims = ctx.route, ctx.claims
    if route is None or route.auth != "jwt" or claims is None:
        return None  # auth: none / webhook: no identity, nothing to check
    assert ctx.target is not None
    identity = claims.derived  # the token's OwnIdentity, once made (own_identity)
    if not (identity if identity is not None else own_identity(claims)).ok:
        METRICS.auth_failures.labels("bad_identity").inc()
        raise invalid_token()
    own = claims.tenant
    template = ctx.runtime.tenant_templates.get(route.name)
    named: str | None = None
    if template is not None:
        try:
            named = named_tenant(template, ctx.target.path, ctx.request.host, own)
        except TenantNotNamed:
            refuse_mismatch(ctx.runtime.services.audit, ctx, own, None)
    config = ctx.runtime.config
    if named is None:
        ctx.tenant = own
        if route.roles and not roles_allow(route.roles, claims, config.tenancy.support, config.mfa.issuer):
            METRICS.auth_failures.labels("role_missing").inc()
            raise Forbidden("Your roles do not allow this route")
        return None
    services = ctx.runtime.services
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
        refuse_mismatch(services.audit, ctx, own, named)
    ctx.tenant, ctx.grant = named, grant
    log_context.bind_tenant(named)
    account_grant_use(services.audit, ctx, claims, named, grant)
    return None


def inject_identity(ctx: RequestContext, headers: UpstreamHeaders) -> None:
    """SPEC §7: the acting identity and its signed context, for ``auth: jwt`` routes only."""
    claims, tenant = ctx.claims, ctx.tenant
    if claims is None or tenant is None or ctx.route is None or ctx.route.auth != "jwt":
        return
    assert ctx.target is not None
    signer = ctx.runtime.services.context_keys.signer
    # Appended, not set: ``headers`` comes from upstream_request_headers (never_forwarded=
    # runtime.never_forwarded), which removed every client copy of these four names (they are
    # always in that set).
    headers.extend(
        identity_headers(
            signer, ctx.request.method, ctx.target.upstream_target, tenant, claims, ctx.grant, ctx.request_id
        )
    )
