"""``POST /admin/keys/rotate`` (SPEC §6, App. B): a new gateway signing key; ``revoke_old`` for
an exposed key makes every older key, and every token it signed, invalid at once."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.admin.context import ActorKey, AuditKey, RequestIdKey, RuntimeKey, SigningKey
from gateway.admin.incidents_api import incident_field, reason_field
from gateway.audit import SYSTEM_TRAIL
from gateway.errors import BadRequest
from gateway.http.json_body import read_json_object


async def rotate_keys(request: web.Request) -> web.Response:
    data = await read_json_object(request)
    revoke_old = data.get("revoke_old", False)
    if not isinstance(revoke_old, bool):
        raise BadRequest("'revoke_old' must be true or false")
    incident = incident_field(data)
    reason = reason_field(data)
    signing = request.app[SigningKey]
    token_ttl = request.app[RuntimeKey]().config.mfa.token_ttl
    revoked = [key.kid for key in signing.verifiable()] if revoke_old else []
    new = await signing.rotate(revoke_old=revoke_old, token_ttl=token_ttl)
    if revoked:
        # App. C: an exposed key must not vouch for audit anchors signed after now either;
        # every trail is signed again with the new key at once.
        await request.app[AuditKey].revoke_anchor_keys([kid for kid in revoked if kid != new.kid])
    await request.app[AuditKey].record(
        "keys.rotated",
        tenants=[SYSTEM_TRAIL],
        actor=request[ActorKey],
        request_id=request[RequestIdKey],
        incident=incident,
        details={"kid": new.kid, "revoke_old": revoke_old, **reason},
    )
    body = {
        "kid": new.kid,
        "revoke_old": revoke_old,
        "incident": incident,
        "jwks_kids": [k["kid"] for k in signing.jwks()["keys"]],
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_key_routes(app: web.Application) -> None:
    app.router.add_post("/admin/keys/rotate", rotate_keys)
