"""Admin authentication and the SPEC §12 role matrix.

Two kinds of bearer token: static tokens from ``admin.tokens`` (stored as SHA-256 hashes; they
act as ``gateway-admin``), and MFA-backed JWTs from an issuer in ``admin.jwt_issuers`` — the
operators' own identity provider, never a tenant's — carrying ``incident-responder`` or
``gateway-admin``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.auth.jwt import JwtVerifier, TokenRejected, has_mfa
from gateway.errors import Forbidden, MfaRequired, MissingToken
from gateway.metrics import METRICS

_REALM = 'Bearer realm="shopino-admin"'
GATEWAY_ADMIN = "gateway-admin"
INCIDENT_RESPONDER = "incident-responder"
GATEWAY_VIEWER = "gateway-viewer"  # read-only: watches the console, changes nothing
ADMIN_ROLES = frozenset((GATEWAY_ADMIN, INCIDENT_RESPONDER, GATEWAY_VIEWER))

# SPEC §12 and App. B: what an incident responder may call. Everything else is gateway-admin only.
_RESPONDER_PREFIXES = (
    "/admin/killswitch",
    "/admin/sessions",
    "/admin/keys",
    "/admin/integrations",
    "/admin/lockouts",
    "/admin/audit",
    "/admin/incidents",
    "/admin/instances",
    "/admin/traffic",
    "/metrics",
)
# What a viewer may read (GET only): the console's boards, never an export of a trail's content.
_VIEWER_PATHS = (
    "/admin/killswitch",
    "/admin/killswitch/targets",
    "/admin/instances",
    "/admin/traffic",
    "/admin/lockouts",
    "/admin/audit/verify",
    "/admin/mfa/freeze",
    "/metrics",
)
# Lifting the MFA enrolment freeze re-opens enrolment to password-only tokens after a store
# reset: gateway-admin only. Responders (and viewers, above) may read it.
_RESPONDER_READS = ("/admin/mfa/freeze",)
_ANY_ROLE = "/admin/whoami"  # the console asks which buttons to show


@dataclass(frozen=True)
class AdminIdentity:
    actor: str  # for the audit trail: "admin-token:<name>" or "jwt:<sub>"
    roles: frozenset[str]
    jwt: bool = False
    auth_time: int | None = None  # the JWT's MFA moment (static tokens have none)


def _invalid() -> MissingToken:
    return MissingToken(
        "The admin token is not valid", headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'}
    )


def _static_token(token: str, tokens: Mapping[str, str]) -> AdminIdentity | None:
    digest = hashlib.sha256(token.encode()).hexdigest()
    name = None
    # SECURITY: compare against every stored hash in constant time (token guessing by timing).
    for stored, token_name in tokens.items():
        if hmac.compare_digest(stored, digest):
            name = token_name
    return AdminIdentity(f"admin-token:{name}", frozenset((GATEWAY_ADMIN,))) if name is not None else None


async def identify_admin(
    authorization: str | None,
    tokens: Mapping[str, str],
    verifier: JwtVerifier | None,
    accepted_amr: tuple[str, ...],
) -> AdminIdentity:
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise MissingToken("An admin bearer token is required", headers={"WWW-Authenticate": _REALM})
    identity = _static_token(token, tokens)
    if identity is not None:
        return identity
    if verifier is None or token.count(".") != 2:
        raise _invalid()
    try:
        # SECURITY: this verifier knows only admin.jwt_issuers, so a tenant's IdP cannot mint
        # operator tokens however it fills the roles claim.
        claims = await verifier.verify(token)
    except TokenRejected as rejected:
        METRICS.auth_failures.labels(f"admin_{rejected.reason}").inc()
        raise _invalid() from None
    if not has_mfa(claims, accepted_amr):
        raise MfaRequired(
            "Admin calls need a multi-factor authenticated token",
            headers={"WWW-Authenticate": f'{_REALM}, error="insufficient_user_authentication"'},
        )
    roles = frozenset(claims.roles) & ADMIN_ROLES
    if not roles:
        raise Forbidden("This identity has no admin role")
    return AdminIdentity(f"jwt:{claims.subject}", roles, jwt=True, auth_time=claims.auth_time)


def require_step_up(identity: AdminIdentity, method: str, max_age: float, now: float) -> None:
    """Changes through an admin JWT need MFA no older than ``admin.mfa_max_age`` (issue 16).

    SECURITY: a console tab left signed in, or a copied operator token, cannot engage, contain,
    rotate or purge long after its owner authenticated; reading stays possible. Static tokens
    are automation credentials without an MFA moment and are governed by their own rotation."""
    if not identity.jwt or method in ("GET", "HEAD", "OPTIONS"):
        return
    if identity.auth_time is not None and now - identity.auth_time <= max_age:
        return
    METRICS.auth_failures.labels("admin_mfa_stale").inc()
    raise MfaRequired(
        "Admin changes need a recent multi-factor authentication",
        headers={
            "WWW-Authenticate": f'{_REALM}, error="insufficient_user_authentication", '
            f'error_description="A more recent authentication is required", max_age={int(max_age)}'
        },
    )


def authorize(identity: AdminIdentity, method: str, path: str) -> None:
    if GATEWAY_ADMIN in identity.roles or path == _ANY_ROLE:
        return
    if INCIDENT_RESPONDER in identity.roles:
        if path.startswith(_RESPONDER_PREFIXES):
            return
        # Grants: responders list and revoke; only tenant admins create them (SPEC §7).
        if path.startswith("/admin/grants") and method in ("GET", "DELETE"):
            return
        if path in _RESPONDER_READS and method in ("GET", "HEAD"):
            return
    reads = method in ("GET", "HEAD") and (path in _VIEWER_PATHS or path.startswith("/admin/incidents/"))
    if GATEWAY_VIEWER in identity.roles and reads:
        return
    raise Forbidden("This admin role may not call this endpoint")
