"""The SPEC §3 order, in one list. Later features insert their stages here, nowhere else.

A stage takes the request context and returns ``None`` to continue, a response to answer
early (a CORS preflight, a health probe), or raises a ``GatewayError`` to refuse.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.context import RequestContext
from gateway.middleware.authenticate import authenticate
from gateway.middleware.body_limit import enforce_body_limit
from gateway.middleware.cors import apply_cors
from gateway.middleware.header_limits import enforce_header_limits
from gateway.middleware.route import resolve_route
from gateway.middleware.webhook import verify_webhook
from gateway.proxy import ResponseCheck

Stage = Callable[[RequestContext], Awaitable[web.StreamResponse | None]]

PIPELINE: tuple[Stage, ...] = (
    enforce_header_limits,  # listen.limits: cheapest refusal first (431)
    resolve_route,  # §3.2 / §4: canonical path, route match, /_gateway/* endpoints
    apply_cors,  # §3.2: preflights answered before authentication
    enforce_body_limit,  # §10: declared Content-Length over max_body (413)
    authenticate,  # §3.5 / §5: bearer tokens, MFA, revocation
    verify_webhook,  # §10: auth: webhook routes, HMAC over the raw body
)

# SPEC §3.9: response checks, in order, on every proxied (non-WebSocket) response.
RESPONSE_CHECKS: tuple[ResponseCheck, ...] = ()
