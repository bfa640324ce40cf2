"""Routes with ``audit: true``: every authenticated request is filed in the acting tenant's
audit trail, so the 72-hour breach notice can say which records of which module were touched,
by whom and when (SPEC §11 "what was touched").

The query string is left out: it carries search terms and ids that may be personal data, and
the canonical path already names what was reached.

An adapter from the request's facts to the trail, kept out of ``gateway.audit`` so the trail's
package reads nothing of a request (``gateway.facts``). Its log lines keep the audit logger's name.
"""

from __future__ import annotations

import structlog

from gateway.audit.trail import AuditTrail
from gateway.facts import RequestFacts

log = structlog.get_logger("gateway.audit")
ACCESS_EVENT = "data.accessed"


def audit_access(ctx: RequestFacts, status: int, trail: AuditTrail) -> None:
    """File one ``data.accessed`` record in ``trail`` (the request's runtime's) when the route
    asks for it and a tenant is known.

    Queued, never awaited (``gateway.audit.writer``): the connection is not held by the
    store, so a hung Redis cannot delay the next request on a keep-alive connection."""
    route = ctx.route
    if route is None or not route.audit or ctx.tenant is None or ctx.target is None:
        return
    try:
        trail.submit(
            ACCESS_EVENT,
            tenants=[ctx.tenant],
            actor=ctx.user,
            request_id=ctx.request_id,
            details={
                "method": ctx.request.method,
                "path": ctx.target.path,
                "route": route.name,
                "module": route.module,
                "status": status,
            },
        )
    except (OSError, ValueError):
        # The queue was full and the spool failed too (or a bug): the response is already decided, so
        # the loss is logged loudly rather than turned into an error the client cannot act on.
        log.error("access_audit_failed", request_id=ctx.request_id, route=route.name)
