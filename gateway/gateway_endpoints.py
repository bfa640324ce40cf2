"""The gateway's own endpoints on the public listener, answered before route matching."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import health, mfa_api, tenant_audit_api
from gateway.context import RequestContext
from gateway.errors import MethodNotAllowed

Endpoint = Callable[[RequestContext], Awaitable[web.StreamResponse]]
_READ = frozenset(("GET", "HEAD"))
_POST = frozenset(("POST",))

GATEWAY_ENDPOINTS: dict[str, tuple[frozenset[str], Endpoint]] = {
    health.HEALTH: (_READ, health.health),
    health.READY: (_READ, health.ready),
    "/.well-known/jwks.json": (_READ, mfa_api.jwks),
    "/_gateway/mfa/enroll": (_POST, mfa_api.enroll),
    "/_gateway/mfa/activate": (_POST, mfa_api.activate),
    "/_gateway/mfa/verify": (_POST, mfa_api.verify),
    "/_gateway/audit": (_READ, tenant_audit_api.export_own_trail),
}


async def serve_gateway_endpoint(ctx: RequestContext) -> web.StreamResponse:
    assert ctx.target is not None
    methods, endpoint = GATEWAY_ENDPOINTS[ctx.target.path]
    if ctx.request.method not in methods:
        raise MethodNotAllowed("Method not allowed here", headers={"Allow": ", ".join(sorted(methods))})
    response = await endpoint(ctx)
    ctx.status = response.status
    return response
