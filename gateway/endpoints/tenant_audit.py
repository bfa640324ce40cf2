"""``GET /_gateway/audit?format=…``: a tenant admin exports its own tenant's trail (SPEC §11).

Needs a ``tenant-admin`` token whose MFA is fresh (≤ 15 minutes); the tenant is the token's,
never a parameter, so no tenant can read another's trail.
"""

from __future__ import annotations

from aiohttp import web

from gateway.context import RequestContext
from gateway.endpoints.download import export_headers, stream_export
from gateway.endpoints.mfa import fresh_tenant_admin
from gateway.errors import BadRequest
from gateway.http.json_body import json_response
from gateway.state.bounded import bounded_iter


async def export_own_trail(ctx: RequestContext) -> web.StreamResponse:
    claims = await fresh_tenant_admin(
        ctx,
        mfa_detail="Exporting the audit trail needs a multi-factor authentication within 15 minutes",
        role_detail="Only a tenant-admin may export the tenant's audit trail",
    )
    query = ctx.request.query
    fmt = query.get("format", "json")
    trail = ctx.runtime.services.audit
    try:  # the arguments are checked here (400), before anything is audited or signed
        trail.export(claims.tenant, since=query.get("since"), until=query.get("until"), fmt=fmt)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    # Awaited (not queued): the export record must be in the trail before its anchor is written.
    await trail.record(
        "audit.exported",
        tenants=[claims.tenant],
        actor=claims.subject,
        request_id=ctx.request_id,
        details={"format": fmt, "via": "public"},
    )
    # App. C: every export is signed up to the export record, and ends with that anchor.
    through = await trail.sign_for_export(claims.tenant)
    # Issue 15: each step of the download waits on the store at most store_timeout.
    chunks = bounded_iter(
        trail.export(
            claims.tenant, since=query.get("since"), until=query.get("until"), fmt=fmt, through_seq=through
        ),
        ctx.runtime.config.rate_limits.store_timeout,
    )
    if ctx.downstream is None:
        return await stream_export(ctx.request, chunks, claims.tenant, fmt, ctx.response_headers)  # type: ignore[arg-type]
    # The lean listener: the same download, streamed through its writer.
    down = ctx.downstream
    ctx.status = 200
    await down.start(200, None, {**export_headers(claims.tenant, fmt), **ctx.response_headers}, None)
    async for chunk in chunks:
        await down.write(chunk)
    await down.end()
    return down  # type: ignore[return-value]


async def anchor_jwks(ctx: RequestContext) -> web.StreamResponse:
    """``GET /_gateway/audit/jwks``: every public key that signed an audit anchor, so a tenant
    admin can check an export offline (``audit verify --file X --jwks J``) even when its older
    anchors predate a key rotation. Public keys only; read from the store at most once a minute."""
    keys = await ctx.runtime.services.audit.anchor_keys(max_age=60.0)
    return json_response(keys.jwks(), headers={"Cache-Control": "public, max-age=60"})
