"""``GET /_gateway/audit?format=…``: a tenant admin exports its own tenant's trail (SPEC §11).

Needs a ``tenant-admin`` token whose MFA is fresh (≤ 15 minutes); the tenant is the token's,
never a parameter, so no tenant can read another's trail.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.admin.audit_api import stream_export
from gateway.auth.jwt import has_mfa, mfa_fresh
from gateway.context import RequestContext
from gateway.errors import BadRequest, Forbidden, MfaRequired
from gateway.mfa_api import authenticated_claims
from gateway.middleware.authenticate import REALM

FRESH_MFA_SECONDS = 15 * 60
TENANT_ADMIN_ROLE = "tenant-admin"


async def export_own_trail(ctx: RequestContext) -> web.StreamResponse:
    claims = await authenticated_claims(ctx)
    if not has_mfa(claims, ctx.runtime.config.mfa.accepted_amr) or not mfa_fresh(
        claims, FRESH_MFA_SECONDS, time.time()
    ):
        raise MfaRequired(
            "Exporting the audit trail needs a multi-factor authentication within 15 minutes",
            headers={
                "WWW-Authenticate": f'{REALM}, error="insufficient_user_authentication", '
                f"max_age={FRESH_MFA_SECONDS}"
            },
        )
    if TENANT_ADMIN_ROLE not in claims.roles:
        raise Forbidden("Only a tenant-admin may export the tenant's audit trail")
    query = ctx.request.query
    fmt = query.get("format", "json")
    trail = ctx.runtime.services.audit
    try:
        chunks = trail.export(claims.tenant, since=query.get("since"), until=query.get("until"), fmt=fmt)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    await trail.record(
        "audit.exported",
        tenants=[claims.tenant],
        actor=claims.subject,
        request_id=ctx.request_id,
        details={"format": fmt, "via": "public"},
    )
    return await stream_export(ctx.request, chunks, claims.tenant, fmt, ctx.response_headers)
