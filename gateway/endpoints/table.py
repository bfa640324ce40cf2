"""The gateway's own endpoints on the public listener, answered before route matching."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.context import RequestContext
from gateway.endpoints import grants as grants_api
from gateway.endpoints import health
from gateway.endpoints import mfa as mfa_api
from gateway.endpoints import tenant_audit as tenant_audit_api
from gateway.errors import MethodNotAllowed
from gateway.routing import HEALTH_PATH, READY_PATH

Endpoint = Callable[[RequestContext], Awaitable[web.StreamResponse]]
_READ = frozenset(("GET", "HEAD"))
_POST = frozenset(("POST",))
_GRANTS = frozenset(("GET", "HEAD", "POST"))
_DELETE = frozenset(("DELETE",))

GATEWAY_ENDPOINTS: dict[str, tuple[frozenset[str], Endpoint]] = {
    HEALTH_PATH: (_READ, health.health),
    READY_PATH: (_READ, health.ready),
    "/.well-known/jwks.json": (_READ, mfa_api.jwks),
    "/_gateway/mfa/enroll": (_POST, mfa_api.enroll),
    "/_gateway/mfa/activate": (_POST, mfa_api.activate),
    "/_gateway/mfa/verify": (_POST, mfa_api.verify),
    "/_gateway/audit": (_READ, tenant_audit_api.export_own_trail),
    "/_gateway/audit/jwks": (_READ, tenant_audit_api.anchor_jwks),
    grants_api.GRANTS_PATH: (_GRANTS, grants_api.grants),
}
# Endpoints with an id in the path: "/_gateway/grants/{id}".
GATEWAY_ITEM_ENDPOINTS: dict[str, tuple[frozenset[str], Endpoint]] = {
    grants_api.GRANT_ITEM_PREFIX: (_DELETE, grants_api.grant_item),
}


def is_gateway_endpoint(path: str) -> bool:
    return path in GATEWAY_ENDPOINTS or _item_endpoint(path) is not None


def _item_endpoint(path: str) -> tuple[frozenset[str], Endpoint] | None:
    prefix, slash, _ = path.rpartition("/")
    return GATEWAY_ITEM_ENDPOINTS.get(prefix + slash) if slash else None


async def serve_gateway_endpoint(ctx: RequestContext) -> web.StreamResponse:
    assert ctx.target is not None
    found = GATEWAY_ENDPOINTS.get(ctx.target.path) or _item_endpoint(ctx.target.path)
    assert found is not None
    methods, endpoint = found
    if ctx.request.method not in methods:
        raise MethodNotAllowed("Method not allowed here", headers={"Allow": ", ".join(sorted(methods))})
    response = await endpoint(ctx)
    ctx.status = response.status
    return response
