"""SPEC §5, §6: a valid token from a trusted issuer, MFA-backed unless the route says
``mfa: false``, fresh enough for ``mfa_max_age``. Routes with ``auth: none`` skip this stage.

The reason a token was refused is logged and counted; the client only learns that it was.
"""

from __future__ import annotations

import time
from typing import NoReturn

import structlog

from gateway.auth.bearer import (
    REALM,
    bearer_token,
    invalid_token,
    mfa_required,
    mfa_shortfall,
    refuse_revoked,
)
from gateway.auth.jwt import TokenRejected, VerifiedClaims
from gateway.context import RequestContext
from gateway.deferred_pre_auth import settle_pre_auth
from gateway.errors import MissingToken
from gateway.logs import context as log_context
from gateway.metrics import METRICS
from gateway.middleware import StageResult
from gateway.origins import check_cookie_origin

log = structlog.get_logger("gateway.auth")


def _cookie_token(ctx: RequestContext, cookie_name: str | None) -> str | None:
    """Without a bearer header: with ``auth.token_cookie`` set, the cookie's token, once the
    request has passed the CSRF rule. With both, the header authenticates and the cookie is
    never read: it neither authenticates nor falls back when the header's token is refused."""
    if not cookie_name:
        return None
    request = ctx.request
    token = request.cookies.get(cookie_name) or None
    if token is not None:  # App. B CSRF, before any work on the token
        route = ctx.route
        policy = ctx.runtime.config.cors.get(route.cors) if route is not None and route.cors else None
        check_cookie_origin(request.method, request.headers, policy)
    return token


def authenticate(ctx: RequestContext) -> StageResult:
    """A cached token (every request of a session) is checked without waiting; a missing
    token or one to verify in full returns the coroutine that settles pre_auth first."""
    route = ctx.route
    if route is None or route.auth != "jwt":
        return None  # auth: none, or auth: webhook (its own signature check, next stage)
    runtime = ctx.runtime
    token = bearer_token(ctx.request.headers)  # the header's; the cookie's only without one
    if token is None:
        token = _cookie_token(ctx, runtime.config.auth.token_cookie)
        if token is None:
            return _refuse_missing(ctx)
    try:
        claims = runtime.verifier.verify_cached(token, ctx.token_memo)
    except TokenRejected as rejected:
        _refuse_rejected(ctx, rejected)
    if claims is None:
        return _verify_in_full(ctx, token)
    _admit(ctx, claims)
    return None


async def _refuse_missing(ctx: RequestContext) -> None:
    await settle_pre_auth(ctx)  # an anonymous flood is refused by pre_auth, as ever
    METRICS.auth_failures.labels("missing_token").inc()
    raise MissingToken("A bearer token is required", headers={"WWW-Authenticate": REALM})


async def _verify_in_full(ctx: RequestContext, token: str) -> None:
    try:
        # SECURITY: signature flood — pre_auth sheds it before any ES256 work, even when its hit
        # was deferred to go with the route stage's (only cached tokens skip this).
        await settle_pre_auth(ctx)
        claims = await ctx.runtime.verifier.verify(token)
    except TokenRejected as rejected:
        _refuse_rejected(ctx, rejected)
    _admit(ctx, claims)


def _refuse_rejected(ctx: RequestContext, rejected: TokenRejected) -> NoReturn:
    METRICS.auth_failures.labels(rejected.reason).inc()
    log.info("token_rejected", reason=rejected.reason, request_id=ctx.request_id)
    raise invalid_token() from None


def _admit(ctx: RequestContext, claims: VerifiedClaims) -> None:
    """Revocation and MFA over verified claims; on success the context holds the identity."""
    route, runtime = ctx.route, ctx.runtime
    assert route is not None
    if runtime.services.revocations.is_revoked(claims.tenant, claims.subject, claims.issued_at):
        refuse_revoked(ctx.request_id)  # ensure_not_revoked, inline: this runs on every request
    ctx.claims = claims
    ctx.user = claims.subject
    ctx.tenant = claims.tenant
    log_context.bind_tenant(claims.tenant)
    # The common case (MFA-backed, no max age) needs no refusal to be built; has_mfa, inline.
    if route.mfa and (
        route.mfa_max_age is not None or claims.amr_set.isdisjoint(runtime.config.mfa.accepted_amr)
    ):
        shortfall = mfa_shortfall(claims, runtime.config.mfa.accepted_amr, route.mfa_max_age, time.time())
        if shortfall is not None:
            METRICS.auth_failures.labels(shortfall).inc()
            raise mfa_required(shortfall, route.mfa_max_age)
