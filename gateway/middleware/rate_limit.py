"""SPEC §3.4 / §3.7 / §8: the rate-limit stages.

``limit_pre_auth`` counts ``rate_limits.pre_auth`` by client IP before any token is verified
(the cheap shed); ``limit_route`` counts the route's policies once user and acting tenant are
known, and on ``login: true`` routes refuses locked IPs and usernames before the upstream sees
the attempt (the upstream's answer to it is ``login_outcome.check_login_outcome``). What a
verdict writes and raises is ``gateway.ratelimit.verdicts``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config.model import RouteConfig
from gateway.context import RequestContext
from gateway.deferred_pre_auth import settle_pre_auth
from gateway.http.expect_continue import send_continue
from gateway.http.request_body import read_bounded_body, refuse_declared_oversize
from gateway.middleware import StageResult
from gateway.ratelimit.body_fields import counted_body_limit, counted_content_type, counted_fields
from gateway.ratelimit.deferred import Checks
from gateway.ratelimit.limiter import Verdict
from gateway.ratelimit.policies import address_checks, counted_checks, identity_checks
from gateway.ratelimit.service import RateLimitRuntime as RateLimits
from gateway.ratelimit.verdicts import apply_verdict, refuse_locked, refuse_pre_auth


def limit_pre_auth(ctx: RequestContext) -> StageResult:
    """A plain function (``gateway.pipeline``): a deferred hit, a route without pre_auth items
    and a refusal from memory never wait; only a hit sent now returns a coroutine."""
    rl = ctx.runtime.rate_limits
    if rl is None:
        return None
    compiled = rl.compiled
    if not compiled.pre_auth:
        return None
    if compiled.pre_auth_by_address:  # ip keys only: the address's checks, remembered
        checks = address_checks(ctx, rl.backend.hash, compiled.pre_auth, compiled.address_memo)
    else:
        checks = counted_checks(ctx, rl.backend.hash, compiled.pre_auth, None)
    if not checks:
        return None
    known = rl.backend.refused_from_memory(checks, "pre_auth")
    if known is not None:
        apply_verdict(ctx, known)  # raises: a flood costs no deferral bookkeeping
    route = ctx.route
    # Not known full (just asked), and a deferrable route's items are all script items: the
    # deferral only needs the script in use and the store up.
    if route is not None and route.name in compiled.deferrable and rl.backend.script_up():
        # One store call per request: the hit goes with the route stage's (limit_route), or
        # alone first the moment anything else would happen (settle_pre_auth).
        ctx.deferred_pre_auth = checks
        return None
    return _pre_auth_now(ctx, rl, checks)


async def _pre_auth_now(ctx: RequestContext, rl: RateLimits, checks: Checks) -> None:
    refuse_pre_auth(ctx, await rl.backend.check(checks, rl.compiled, "pre_auth", state=False))


def limit_route(ctx: RequestContext) -> StageResult:
    """A plain function (``gateway.pipeline``): a coroutine only when the store or the body has
    to be waited for; a route with nothing to count returns at once."""
    rl = ctx.runtime.rate_limits
    route = ctx.route
    if rl is None or route is None:
        return None
    compiled = rl.compiled
    counted = compiled.counted_fields.get(route.name)
    if counted is not None:  # the body is read first (body:FIELD items, login protection)
        return _limit_with_body(ctx, rl, route, counted)
    items = compiled.by_route.get(route.name)
    if not items:
        return None  # the common case: nothing to count, nothing to read
    if route.name in compiled.by_identity:  # user and tenant keys: the identity's checks, remembered
        checks = identity_checks(ctx, rl.backend.hash, route.name, items, compiled.identity_memo)
    else:
        checks = counted_checks(ctx, rl.backend.hash, items, None)
    deferred = ctx.deferred_pre_auth
    if deferred is not None and checks:  # both stages in one store call, pre_auth's items first
        ctx.deferred_pre_auth = None
        # every item of the route applies (mostly): its most restrictive one is known
        strictest = compiled.strictest[route.name] if len(checks) == len(items) else None
        # the limiter's own coroutine, the verdicts applied by _apply_both: no coroutine of ours
        return rl.backend.decide_in_order(deferred, checks, compiled, ctx, _apply_both, strictest)
    if deferred is None and not checks and not route.login:
        return None  # no item applies (an anonymous request, user/tenant keys): no store call
    return _limit_checked(ctx, rl, route, checks, None)


def _apply_both(ctx: RequestContext, before: Verdict | None, verdict: Verdict | None) -> None:
    if before is not None and (before.shadow or not before.allowed):  # else refuse_pre_auth does nothing
        refuse_pre_auth(ctx, before)
    apply_verdict(ctx, verdict)  # a deferrable route is never a login route


async def _limit_with_body(
    ctx: RequestContext, rl: RateLimits, route: RouteConfig, counted: frozenset[str]
) -> None:
    fields = await read_body_fields(ctx, counted)
    checks = counted_checks(ctx, rl.backend.hash, rl.compiled.by_route.get(route.name, ()), fields)
    await _limit_checked(ctx, rl, route, checks, fields)


async def _limit_checked(
    ctx: RequestContext, rl: RateLimits, route: RouteConfig, checks: Checks, fields: dict[str, Any] | None
) -> None:
    if ctx.deferred_pre_auth is not None:
        if checks:  # both stages in one store call, pre_auth's items decided first
            deferred, ctx.deferred_pre_auth = ctx.deferred_pre_auth, None
            await rl.backend.decide_in_order(deferred, checks, rl.compiled, ctx, _apply_both)
            return
        await settle_pre_auth(ctx)
    limited = rl.backend.check(checks, rl.compiled, "route") if checks else _nothing()
    if not route.login:
        apply_verdict(ctx, await limited)
        return
    subjects = ctx.login_subjects = rl.lockouts.attempt_subjects(ctx.client_ip, fields)
    verdict, locked = await asyncio.gather(limited, rl.lockouts.locked_for(subjects))
    if locked is not None:
        refuse_locked(ctx, verdict, locked)
    apply_verdict(ctx, verdict)


async def _nothing() -> None:
    return None


async def read_body_fields(ctx: RequestContext, counted: frozenset[str]) -> dict[str, Any]:
    """Read the body whole (bounded), keep the exact bytes for the proxy, and read the counted
    fields from it (``gateway.ratelimit.body_fields``: one reading, or a 400)."""
    request = ctx.request
    content_type = counted_content_type(request.headers.getall("Content-Type", ()))
    if ctx.body is None:
        limit = counted_body_limit(ctx.route)
        refuse_declared_oversize(request, limit)
        if not request.body_exists:
            return {}
        send_continue(ctx)  # every check that needs no body has passed
        ctx.body = await read_bounded_body(request, limit)  # forwarded intact by the proxy
    return counted_fields(content_type, ctx.body, counted)
