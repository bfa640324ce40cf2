"""``GET /admin/grants`` and ``DELETE /admin/grants/{id}`` (SPEC §7, §12, App. B).

Responders see and revoke every tenant's support grants; only tenant admins create them (through
``/_gateway/grants`` on the public listener), so an operator can never grant themselves access.
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.audit_api import tenant_param
from gateway.admin.context import ActorKey, AuditKey, RequestIdKey, RuntimeKey
from gateway.admin.incidents_api import incident_field
from gateway.errors import NotFound
from gateway.http.json_body import json_response, read_json_object
from gateway.tenancy.grants import grants_of


async def list_grants(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant")
    service = request.app[RuntimeKey]().services.grants
    grants = await service.list(tenant_param(tenant) if tenant is not None else None)
    return json_response({"grants": grants_of(grants)})


async def revoke_grant(request: web.Request) -> web.Response:
    data = await read_json_object(request)  # optional {"reason", "incident"}
    incident = incident_field(data)
    reason = data.get("reason") if isinstance(data.get("reason"), str) else None
    service = request.app[RuntimeKey]().services.grants
    grant = await service.revoke(request.match_info["grant_id"])
    if grant is None:
        raise NotFound("No such grant")
    await request.app[AuditKey].record(
        "grant.revoked",
        tenants=[grant.tenant],
        actor=request[ActorKey],
        request_id=request[RequestIdKey],
        incident=incident,
        details={"grant": grant.id, "grantee": grant.grantee, "via": "admin", "reason": (reason or "")[:256]},
    )
    return json_response({**grant.public(), "revoked": True, "incident": incident})


def add_grant_routes(app: web.Application) -> None:
    app.router.add_get("/admin/grants", list_grants)
    app.router.add_delete("/admin/grants/{grant_id}", revoke_grant)
