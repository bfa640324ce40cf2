"""The SPEC §3 order, in one list. Later features insert their stages here, nowhere else.

A stage takes the request context and returns ``None`` to continue, a response to answer
early (a CORS preflight), or raises a ``GatewayError`` to refuse. A stage that has to wait
(the store, a key fetch, a body) returns a coroutine instead, which the runner awaits for the
same answer: an ``async def`` stage always does, a plain ``def`` stage only on its slow path.
Most stages never wait, and a plain call costs far less than creating, awaiting and finishing
a coroutine (a frame and a ``StopIteration`` each): a dozen of those per request was a visible
share of the pipeline.
"""

from __future__ import annotations

from inspect import isawaitable
from types import CoroutineType
from typing import Any

from aiohttp import web

from gateway.context import RequestContext
from gateway.deferred_pre_auth import settle_pre_auth
from gateway.middleware import Stage, StageResult
from gateway.middleware.authenticate import authenticate
from gateway.middleware.body_limit import enforce_body_limit
from gateway.middleware.cors import apply_cors
from gateway.middleware.header_limits import enforce_header_limits
from gateway.middleware.killswitch import check_killswitch, check_tenant_killswitch
from gateway.middleware.login_outcome import check_login_outcome
from gateway.middleware.rate_limit import limit_pre_auth, limit_route
from gateway.middleware.request_hygiene import check_request_hygiene
from gateway.middleware.route import resolve_route
from gateway.middleware.tenancy import apply_tenancy, inject_identity
from gateway.middleware.tenant_echo import check_tenant_echo
from gateway.middleware.webhook import verify_webhook
from gateway.proxy import ResponseCheck, UpstreamHeaderHook

__all__ = [
    "PIPELINE",
    "RESPONSE_CHECKS",
    "UPSTREAM_HEADER_HOOKS",
    "Stage",
    "StageResult",
    "run_stage",
    "run_stages",
]

PIPELINE: tuple[Stage, ...] = (
    enforce_header_limits,  # listen.limits: cheapest refusal first (431)
    check_request_hygiene,  # App. C: singletons (400), transfer codings (501), WebSocket handshake (400)
    resolve_route,  # §3.2 / §4: canonical path, route match, /_gateway/* endpoints
    apply_cors,  # §3.2: preflights answered before authentication
    check_killswitch,  # §3.3 / §9: switches that need no identity (memory only)
    limit_pre_auth,  # §3.4 / §8: rate_limits.pre_auth by client IP, before any token work
    enforce_body_limit,  # §10: declared Content-Length over max_body (413)
    authenticate,  # §3.5 / §5: bearer tokens, MFA, revocation
    apply_tenancy,  # §3.6 / §7: tenant_from checks, roles, support grants (acting tenant)
    check_tenant_killswitch,  # §3.3 / §9: tenant switches, once the acting tenant is known
    limit_route,  # §3.7 / §8: route policies (user, tenant, route, header, body); login lockouts
    verify_webhook,  # §10: auth: webhook routes, HMAC over the raw body
)

# Added, in order, to the headers of every forwarded request (WebSocket upgrades included).
UPSTREAM_HEADER_HOOKS: tuple[UpstreamHeaderHook, ...] = (
    inject_identity,  # §7: tenant, user, roles and the signed X-Gateway-Context (auth: jwt routes)
)

# SPEC §3.9: response checks, in order, on every proxied (non-WebSocket) response.
RESPONSE_CHECKS: tuple[ResponseCheck, ...] = (
    check_tenant_echo,  # §7: an answer for another tenant (or none, if required) is withheld (502)
    check_login_outcome,  # §8: upstream 401/403 on login: true routes count as failures
)


async def run_stages(ctx: RequestContext) -> web.StreamResponse | None:
    """Every stage in order: the first early answer, or None when the request goes upstream.
    Both listeners run the pipeline through here."""
    early: Any = None
    try:
        for stage in PIPELINE:
            early = stage(ctx)
            if early is None:
                continue
            if type(early) is CoroutineType:  # the stage waits (an async stage, a slow path)
                early = await early
                if early is None:
                    continue
            elif isawaitable(early):
                # Only on an early answer, never on the common path. A stage that waits through
                # another awaitable (a bare Future) would otherwise pass for an answer: its check
                # never finished. Refused loudly (a 500), never sent.
                raise _not_an_answer(stage)
            break
    except Exception:
        # SPEC §3.4: a request over its pre_auth limit is refused by it (429), whatever a later
        # stage found (a bad token, a tenant switch): a deferred pre_auth hit settles first.
        if ctx.deferred_pre_auth is not None:
            await settle_pre_auth(ctx)
        raise
    if ctx.deferred_pre_auth is not None:  # an early answer before the route stage
        await settle_pre_auth(ctx)
    return early  # type: ignore[no-any-return]


async def run_stage(stage: Stage, ctx: RequestContext) -> web.StreamResponse | None:
    """One stage's answer, its coroutine awaited if it returned one (one stage run on its own)."""
    early = stage(ctx)
    if type(early) is CoroutineType:
        return await early  # type: ignore[no-any-return]
    if isawaitable(early):
        raise _not_an_answer(stage)
    return early  # type: ignore[return-value]


def _not_an_answer(stage: Stage) -> TypeError:
    return TypeError(f"stage {stage.__qualname__} returned an awaitable, not a coroutine")
