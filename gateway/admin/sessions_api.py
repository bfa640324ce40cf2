"""``POST /admin/sessions/revoke {"tenant", "user"?, "incident"?}`` (SPEC §5): every token of that
tenant (or user) issued before now is refused on every instance within a second."""

from __future__ import annotations

import datetime

import orjson
from aiohttp import web

from gateway.admin.audit_api import tenant_param
from gateway.admin.context import ActorKey, AuditKey, RequestIdKey, RevocationsKey
from gateway.admin.incidents_api import incident_field, reason_field
from gateway.errors import BadRequest
from gateway.http.json_body import read_json_object


async def revoke_sessions(request: web.Request) -> web.Response:
    data = await read_json_object(request)
    tenant = tenant_param(data.get("tenant") if isinstance(data.get("tenant"), str) else None)
    user = data.get("user")
    if user is not None and (not isinstance(user, str) or not user or len(user) > 256):
        raise BadRequest("'user' must be a non-empty string when given")
    incident = incident_field(data)
    reason = reason_field(data)
    epoch = await request.app[RevocationsKey].revoke(tenant, user)
    revoked_at = datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")
    await request.app[AuditKey].record(
        "sessions.revoked",
        tenants=[tenant],
        actor=request[ActorKey],
        request_id=request[RequestIdKey],
        incident=incident,
        details={"user": user, "revoked_at": revoked_at, **reason},
    )
    body = {"tenant": tenant, "user": user, "revoked_at": revoked_at, "incident": incident}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_session_routes(app: web.Application) -> None:
    app.router.add_post("/admin/sessions/revoke", revoke_sessions)
