"""The gateway's own TOTP step under ``/_gateway/mfa/`` (SPEC §6).

Each call is authenticated by a first-factor token (``amr`` contains ``pwd``) from a trusted
issuer; ``verify`` answers with a gateway-signed, MFA-backed access token.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from gateway.audit.record import TENANT_ID_RE
from gateway.auth.bearer import REALM, bearer_token, ensure_not_revoked, invalid_token
from gateway.auth.jwt import TokenRejected, VerifiedClaims, has_mfa, mfa_fresh
from gateway.context import RequestContext
from gateway.errors import BadRequest, Forbidden, GatewayError, InvalidToken, MfaRequired, MissingToken
from gateway.http.json_body import json_response, read_json_object
from gateway.killswitch.checks import check_endpoint_tenant
from gateway.metrics import METRICS


async def authenticated_claims(ctx: RequestContext) -> VerifiedClaims:
    """A valid token of a trusted issuer (any factor), or a 401; 503 while its tenant is isolated."""
    token = bearer_token(ctx.request.headers)
    if token is None:
        raise MissingToken("A first-factor bearer token is required", headers={"WWW-Authenticate": REALM})
    try:
        claims = await ctx.runtime.verifier.verify(token)
    except TokenRejected as rejected:
        METRICS.auth_failures.labels(rejected.reason).inc()
        raise invalid_token() from None
    if not TENANT_ID_RE.fullmatch(claims.tenant):
        # SECURITY: "_system" (the gateway's own trail) and malformed ids act for no tenant here
        # either: no MFA enrolment, grant or audit export under them.
        METRICS.auth_failures.labels("bad_identity").inc()
        raise invalid_token()
    ensure_not_revoked(ctx.runtime.services.revocations, claims, ctx.request_id)
    ctx.claims, ctx.user, ctx.tenant = claims, claims.subject, claims.tenant
    # Every tenant-acting endpoint under /_gateway/ passes here: one place for their isolation.
    check_endpoint_tenant(ctx.runtime.services.killswitches.index, ctx.request.method, claims.tenant)
    return claims


FRESH_MFA_SECONDS = 15 * 60
TENANT_ADMIN_ROLE = "tenant-admin"


async def fresh_tenant_admin(ctx: RequestContext, *, mfa_detail: str, role_detail: str) -> VerifiedClaims:
    """A ``tenant-admin`` of the token's own tenant whose MFA is at most 15 minutes old, for the
    step-up actions on a tenant's data (support grants, the audit export)."""
    claims = await authenticated_claims(ctx)
    # SECURITY: step-up: a stolen session without a fresh second factor cannot do these.
    accepted = ctx.runtime.config.mfa.accepted_amr
    if not has_mfa(claims, accepted) or not mfa_fresh(claims, FRESH_MFA_SECONDS, time.time()):
        raise MfaRequired(
            mfa_detail,
            headers={
                "WWW-Authenticate": f'{REALM}, error="insufficient_user_authentication", '
                f"max_age={FRESH_MFA_SECONDS}"
            },
        )
    if TENANT_ADMIN_ROLE not in claims.roles:
        raise Forbidden(role_detail)
    return claims


async def _first_factor(ctx: RequestContext) -> VerifiedClaims:
    claims = await authenticated_claims(ctx)
    if "pwd" not in claims.amr and not has_mfa(claims, ctx.runtime.config.mfa.accepted_amr):
        raise InvalidToken(
            "A first-factor (password) token is required",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    return claims


def _code(data: dict[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value or len(value) > 64:
        raise BadRequest(f"'{field}' is required")
    return value


async def _audit(ctx: RequestContext, event: str, **details: Any) -> None:
    services = ctx.runtime.services
    services.audit.submit(
        event, tenants=[ctx.tenant or "_system"], actor=ctx.user, request_id=ctx.request_id, details=details
    )


async def enroll(ctx: RequestContext) -> web.StreamResponse:
    claims = await _first_factor(ctx)
    mfa_backed = has_mfa(claims, ctx.runtime.config.mfa.accepted_amr)
    try:
        enrollment = await ctx.runtime.services.mfa.enroll(
            claims.tenant, claims.subject, mfa_backed=mfa_backed
        )
    except GatewayError as error:
        # A refused enrolment (frozen after a store reset, or a password-only token for an
        # enrolled user) may be an attacker holding a password: the tenant's trail shows it.
        await _audit(ctx, "mfa.enrolment_refused", problem=error.slug, mfa_backed=mfa_backed)
        raise
    await _audit(ctx, "mfa.enrolled", replaced_active=mfa_backed)
    return json_response(
        {"otpauth_uri": enrollment.otpauth_uri, "secret": enrollment.secret, "qr_svg": enrollment.qr_svg},
        headers={"Pragma": "no-cache"},
    )


async def activate(ctx: RequestContext) -> web.StreamResponse:
    claims = await _first_factor(ctx)
    code = _code(await read_json_object(ctx.request), "code")
    try:
        recovery = await ctx.runtime.services.mfa.activate(claims.tenant, claims.subject, code)
    except GatewayError as error:
        await _audit(ctx, "mfa.activation_failed", problem=error.slug)
        raise
    await _audit(ctx, "mfa.activated")
    return json_response({"recovery_codes": recovery}, headers={"Pragma": "no-cache"})


async def verify(ctx: RequestContext) -> web.StreamResponse:
    claims = await _first_factor(ctx)
    data = await read_json_object(ctx.request)
    services = ctx.runtime.services
    method = "recovery_code" if "recovery_code" in data else "totp"
    try:
        if method == "recovery_code":
            await services.mfa.verify_recovery_code(
                claims.tenant, claims.subject, _code(data, "recovery_code")
            )
        else:
            await services.mfa.verify_code(claims.tenant, claims.subject, _code(data, "code"))
    except GatewayError as error:
        METRICS.auth_failures.labels(f"mfa_{error.slug}").inc()
        await _audit(ctx, "mfa.failed", method=method, problem=error.slug)
        raise
    token, expires_in = await services.mfa.mint_access_token(
        claims.raw,
        services.signing,
        tenant_claim=ctx.runtime.config.tenancy.claim,
        roles_claim=ctx.runtime.config.auth.roles_claim,
    )
    await _audit(ctx, "mfa.verified", method=method)
    return json_response(
        {"access_token": token, "token_type": "Bearer", "expires_in": expires_in},
        headers={"Pragma": "no-cache"},
    )


async def jwks(ctx: RequestContext) -> web.StreamResponse:
    body = orjson.dumps(ctx.runtime.services.signing.jwks())
    return web.Response(
        body=body, content_type="application/json", headers={"Cache-Control": "public, max-age=60"}
    )
