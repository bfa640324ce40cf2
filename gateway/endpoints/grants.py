"""``/_gateway/grants``: a tenant admin grants, lists and revokes support access (SPEC §7).

Every call needs a ``tenant-admin`` token whose MFA is fresh (≤ 15 minutes). The tenant is the
token's, never a parameter: a body naming another tenant is refused as a tenant mismatch, so no
tenant can grant (or see, or revoke) access to another's data.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.audit.record import TENANT_ID_RE
from gateway.auth.jwt import VerifiedClaims
from gateway.config.values import parse_duration
from gateway.context import RequestContext
from gateway.endpoints.mfa import fresh_tenant_admin
from gateway.errors import BadRequest, NotFound, TenantMismatch
from gateway.http.json_body import json_response, read_json_object
from gateway.state.bounded import within
from gateway.tenancy.grants import GRANT_ID_RE, grants_of, validate_grant_request

GRANTS_PATH = "/_gateway/grants"
GRANT_ITEM_PREFIX = GRANTS_PATH + "/"
_FIELDS = frozenset(("grantee", "modules", "ttl", "tenant"))


async def _tenant_admin(ctx: RequestContext) -> VerifiedClaims:
    # SECURITY: granting access to a tenant's data is a step-up action: fresh MFA, every time.
    return await fresh_tenant_admin(
        ctx,
        mfa_detail="Managing support grants needs a multi-factor authentication within 15 minutes",
        role_detail="Only a tenant-admin may manage support grants",
    )


def _store_timeout(ctx: RequestContext) -> float:
    # Issue 15: a request never waits on a sick store longer than rate_limits.store_timeout.
    return ctx.runtime.config.rate_limits.store_timeout


def _ttl(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise BadRequest("'ttl' must be a duration like \"4h\" (at most 24h)") from None


async def grants(ctx: RequestContext) -> web.StreamResponse:
    """``GET`` lists the token's tenant's active grants; ``POST`` creates one."""
    claims = await _tenant_admin(ctx)
    service = ctx.runtime.services.grants
    if ctx.request.method != "POST":
        listed = grants_of(await within(service.list(claims.tenant), _store_timeout(ctx)))
        return json_response({"tenant": claims.tenant, "grants": listed})
    data = await read_json_object(ctx.request)
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise BadRequest(f"Unknown field '{unknown[0][:32]}'")
    if "tenant" in data and data["tenant"] != claims.tenant:
        await _audit(ctx, claims, "tenant.mismatch", {"action": "grant.create"}, data.get("tenant"))
        raise TenantMismatch("A grant can only be given for your own tenant")
    ttl = _ttl(data.get("ttl"))
    try:
        grantee, modules = validate_grant_request(data.get("grantee"), data.get("modules"), ttl)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    creating = service.create(claims.tenant, grantee, modules, ttl, claims.subject)
    grant = await within(creating, _store_timeout(ctx))
    body = grant.public()
    details = {
        "grant": grant.id,
        "grantee": grantee,
        "modules": body["modules"],
        "expires_at": body["expires_at"],
    }
    await _audit(ctx, claims, "grant.created", details)
    return json_response(body, status=201)


async def grant_item(ctx: RequestContext) -> web.StreamResponse:
    """``DELETE /_gateway/grants/{id}``: revoke one of the token's tenant's grants."""
    assert ctx.target is not None
    claims = await _tenant_admin(ctx)
    grant_id = ctx.target.path[len(GRANT_ITEM_PREFIX) :]
    if not GRANT_ID_RE.fullmatch(grant_id):
        raise NotFound("No such grant")
    # SECURITY: looked up in the token's own tenant only: another tenant's grant id is a 404.
    grant = await within(ctx.runtime.services.grants.revoke(grant_id, claims.tenant), _store_timeout(ctx))
    if grant is None:
        raise NotFound("No such grant")
    await _audit(ctx, claims, "grant.revoked", {"grant": grant.id, "grantee": grant.grantee, "via": "tenant"})
    return json_response({**grant.public(), "revoked": True})


async def _audit(
    ctx: RequestContext, claims: VerifiedClaims, event: str, details: dict[str, Any], other: object = None
) -> None:
    tenants = [claims.tenant]
    if isinstance(other, str) and other != claims.tenant and TENANT_ID_RE.fullmatch(other):
        tenants.append(other)  # App. B: a mismatch is filed in both tenants' trails
        details = {**details, "requested_tenant": other}
    ctx.runtime.services.audit.submit(
        event, tenants=tenants, actor=claims.subject, request_id=ctx.request_id, details=details
    )
