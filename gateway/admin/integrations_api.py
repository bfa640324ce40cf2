"""``POST /admin/integrations/{name}/rotate`` (App. B): a new webhook secret; the old one keeps
verifying for the integration's ``rotation_grace``. A generated secret is returned once."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.admin.context import ActorKey, AuditKey, IntegrationsKey, RequestIdKey, RuntimeKey
from gateway.audit import SYSTEM_TRAIL
from gateway.errors import BadRequest, NotFound
from gateway.http.json_body import read_json_object


async def rotate_integration(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    config = request.app[RuntimeKey]().config.integrations.get(name)
    if config is None:
        raise NotFound("No integration of that name is configured")
    data = await read_json_object(request)
    given = data.get("secret")
    if given is not None and (not isinstance(given, str) or len(given) < 16 or len(given) > 512):
        raise BadRequest("'secret' must be a string of 16 to 512 characters")
    secret = await request.app[IntegrationsKey].rotate(
        name, given.encode() if isinstance(given, str) else None, config.rotation_grace
    )
    await request.app[AuditKey].record(
        "integration.rotated",
        tenants=[SYSTEM_TRAIL],
        actor=request[ActorKey],
        request_id=request[RequestIdKey],
        details={"integration": name, "grace_seconds": config.rotation_grace, "generated": given is None},
    )
    body: dict[str, object] = {"integration": name, "grace_seconds": config.rotation_grace}
    if given is None:
        body["secret"] = secret.decode()  # shown once: the operator gives it to the provider
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", headers={"Cache-Control": "no-store"}
    )


def add_integration_routes(app: web.Application) -> None:
    app.router.add_post("/admin/integrations/{name}/rotate", rotate_integration)
