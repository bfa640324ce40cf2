"""SPEC §3 step 2: canonical path (§4) and route match; the gateway's own endpoints."""

from __future__ import annotations

import re

from multidict import istr

from gateway.context import RequestContext
from gateway.endpoints.table import (
    GATEWAY_ENDPOINTS,
    GATEWAY_ITEM_ENDPOINTS,
    is_gateway_endpoint,
    serve_gateway_endpoint,
)
from gateway.errors import BadRequest
from gateway.exchange import ServerRequest
from gateway.killswitch.checks import check_gateway_endpoint
from gateway.middleware import StageResult
from gateway.routing import canonical_target, method_not_allowed

# RFC 3986 host (reg-name or IP literal) and optional port; anything else in Host is an attack on
# whatever reads it downstream (Forwarded/X-Forwarded-Host injection, cache poisoning).
_HOST_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._-]{1,253})(?::[0-9]{1,5})?\Z")
# Host values that passed _HOST_RE: nearly every request names one of a handful, so the regex
# runs once per value. SECURITY: memory exhaustion — only valid values enter (at most 259
# characters each), and the memo starts over at its cap however many a client invents.
_VALID_HOSTS: set[str] = set()
VALID_HOSTS_MAX = 1024
_HOST = istr("Host")  # istr: no case folding per request
# The second character of every gateway endpoint's path (and item prefix): a path whose second
# character is none of these cannot be one (each is a table key, or a key plus an id), so most
# requests skip the endpoint lookup ("/e…" of "/erp/…" is not "/_…" or "/.…").
_ENDPOINT_SECOND = frozenset(path[1:2] for path in (*GATEWAY_ENDPOINTS, *GATEWAY_ITEM_ENDPOINTS))


def checked_host(request: ServerRequest) -> str | None:
    hosts = request.headers.getall(_HOST, ())
    if len(hosts) > 1:
        raise BadRequest("More than one Host header")
    if not hosts:
        if request.version >= (1, 1):
            raise BadRequest("Host header required")
        return None
    host = hosts[0]
    if host in _VALID_HOSTS:
        return host
    # SECURITY: Host header injection (quotes, spaces, control characters) is refused.
    if not _HOST_RE.match(host):
        raise BadRequest("Invalid Host header")
    if len(_VALID_HOSTS) >= VALID_HOSTS_MAX:
        _VALID_HOSTS.clear()
    _VALID_HOSTS.add(host)
    return host


def resolve_route(ctx: RequestContext) -> StageResult:
    request = ctx.request
    method = request.method
    if method == "CONNECT" and not request.raw_path.startswith("/"):
        # SECURITY: open proxy — an authority-form CONNECT names no route that could list it.
        raise method_not_allowed()
    # checked_host's common case inline (one Host, a value already found valid); anything else
    # goes through it whole.
    hosts = request.headers.getall(_HOST, ())
    if len(hosts) == 1 and hosts[0] in _VALID_HOSTS:
        host: str | None = hosts[0]
    else:
        host = checked_host(request)
    ctx.target = target = canonical_target(request.raw_path, host)
    path = target.path
    if path[1:2] in _ENDPOINT_SECOND and is_gateway_endpoint(path):
        # SPEC §9: a global switch spares only health and ready
        runtime = ctx.runtime
        check_gateway_endpoint(
            runtime.services.killswitches.index, ctx, case_insensitive=runtime.config.routes_case_insensitive
        )
        return serve_gateway_endpoint(ctx)  # awaited by the pipeline runner
    ctx.route = ctx.runtime.routes.match(path, method)
    return None
