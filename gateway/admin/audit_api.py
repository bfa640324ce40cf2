"""Admin audit endpoints (SPEC §11, App. B): export, verify, tenant purge (incidents: incidents_api)."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.admin.context import ActorKey, AuditKey, RequestIdKey, RevocationsKey
from gateway.audit import CONTENT_TYPES, SYSTEM_TRAIL, AuditTrail, parse_time_bound, validate_tenant
from gateway.audit.record import format_time
from gateway.endpoints.download import stream_export
from gateway.errors import BadRequest
from gateway.http.json_body import json_response


def tenant_param(value: str | None, name: str = "tenant") -> str:
    """A tenant id by the audit trail's own rule (``validate_tenant``), or ``_system``."""
    try:
        return validate_tenant(value)
    except ValueError:
        raise BadRequest(
            f"'{name}' must be a tenant id (letters, digits, '.', '_', '@', '-') or _system"
        ) from None


def _bounds(request: web.Request) -> tuple[float | None, float | None]:
    try:
        since = parse_time_bound(request.query.get("since"), name="since")
        until = parse_time_bound(request.query.get("until"), name="until")
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return since, until


async def export_audit(request: web.Request) -> web.StreamResponse:
    trail: AuditTrail = request.app[AuditKey]
    tenant = tenant_param(request.query.get("tenant"))
    fmt = request.query.get("format", "json")
    if fmt not in CONTENT_TYPES:
        raise BadRequest("'format' must be json, csv or xml")
    since, until = _bounds(request)
    # The export itself is an audited act: who pulled which tenant's trail (SPEC §11).
    await trail.record(
        "audit.exported",
        tenants=[tenant],
        actor=request[ActorKey],
        request_id=request[RequestIdKey],
        details={"format": fmt, "since": since, "until": until, "via": "admin"},
    )
    # App. C: every export is signed up to the export record, and ends with that anchor.
    through = await trail.sign_for_export(tenant)
    chunks = trail.export(tenant, since=since, until=until, fmt=fmt, through_seq=through)
    return await stream_export(request, chunks, tenant, fmt)


async def verify_audit(request: web.Request) -> web.Response:
    trail: AuditTrail = request.app[AuditKey]
    tenant = tenant_param(request.query.get("tenant"))
    result = await trail.verify(tenant)
    body = {
        "tenant": tenant,
        "ok": result.ok,
        "records": result.records,
        "problem": result.problem,
        "first_bad_seq": result.bad_seq,
        "anchors": result.anchors,
        "signed_through": result.signed_through,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def anchor_jwks(request: web.Request) -> web.Response:
    """Every key that ever signed an anchor: what ``audit verify --file --jwks`` needs for an
    export whose older anchors were signed before a key rotation."""
    keys = await request.app[AuditKey].anchor_keys()
    return json_response(keys.jwks())


async def purge_tenant(request: web.Request) -> web.Response:
    trail: AuditTrail = request.app[AuditKey]
    tenant = tenant_param(request.match_info["tenant"])
    if tenant == SYSTEM_TRAIL:
        raise BadRequest("the _system trail cannot be purged")
    # SECURITY: sealed before the purge: the tenant's sessions end, and no token revoked before
    # the purge is honoured again once its per-user entries are gone (App. C).
    sealed_at = await request.app[RevocationsKey].seal_tenant(tenant)
    summary = await trail.purge_tenant(tenant, actor=request[ActorKey], request_id=request[RequestIdKey])
    body = {"tenant": tenant, "purged": True, "sessions_revoked_at": format_time(sealed_at), **summary}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_audit_routes(app: web.Application) -> None:
    app.router.add_get("/admin/audit", export_audit)
    app.router.add_get("/admin/audit/verify", verify_audit)
    app.router.add_get("/admin/audit/jwks", anchor_jwks)
    app.router.add_delete("/admin/tenants/{tenant}", purge_tenant)
