"""Admin audit endpoints (SPEC §11, App. B): export, verify, tenant purge, incidents later."""

from __future__ import annotations

import re

import orjson
from aiohttp import web

from gateway.admin.context import ActorKey, AuditKey
from gateway.audit import SYSTEM_TRAIL, AuditTrail, parse_time_bound
from gateway.context import request_id_for
from gateway.errors import BadRequest

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_FORMATS = {"json": "application/json", "csv": "text/csv; charset=utf-8", "xml": "application/xml"}


def tenant_param(value: str | None, name: str = "tenant") -> str:
    if value == SYSTEM_TRAIL:
        return value
    if not value or not _TENANT_RE.match(value):
        raise BadRequest(f"'{name}' must be a tenant id (letters, digits, '.', '_', '-') or _system")
    return value


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
    if fmt not in _FORMATS:
        raise BadRequest("'format' must be json, csv or xml")
    since, until = _bounds(request)
    # The export itself is an audited act: who pulled which tenant's trail (SPEC §11).
    await trail.record(
        "audit.exported",
        tenants=[tenant],
        actor=request[ActorKey],
        request_id=request_id_for(request.headers.get("X-Request-ID")),
        details={"format": fmt, "since": since, "until": until, "via": "admin"},
    )
    response = web.StreamResponse(
        headers={
            "Content-Type": _FORMATS[fmt],
            "Content-Disposition": f'attachment; filename="audit-{tenant}.{fmt}"',
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    async for chunk in trail.export(tenant, since=since, until=until, fmt=fmt):
        await response.write(chunk)
    await response.write_eof()
    return response


async def verify_audit(request: web.Request) -> web.Response:
    trail: AuditTrail = request.app[AuditKey]
    tenant = tenant_param(request.query.get("tenant"))
    result = await trail.verify(tenant)
    body = {"tenant": tenant, "ok": result.ok, "records": result.records, "problem": result.problem}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def purge_tenant(request: web.Request) -> web.Response:
    trail: AuditTrail = request.app[AuditKey]
    tenant = tenant_param(request.match_info["tenant"])
    if tenant == SYSTEM_TRAIL:
        raise BadRequest("the _system trail cannot be purged")
    summary = await trail.purge_tenant(
        tenant, actor=request[ActorKey], request_id=request_id_for(request.headers.get("X-Request-ID"))
    )
    return web.Response(
        body=orjson.dumps({"tenant": tenant, "purged": True, **summary}), content_type="application/json"
    )


def add_audit_routes(app: web.Application) -> None:
    app.router.add_get("/admin/audit", export_audit)
    app.router.add_get("/admin/audit/verify", verify_audit)
    app.router.add_delete("/admin/tenants/{tenant}", purge_tenant)
