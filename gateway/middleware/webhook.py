"""SPEC §10: routes with ``auth: webhook`` verify the provider's HMAC over the raw body.

The body is read once (``gateway.http.request_body``, bounded by ``max_body``, default 1 MiB) and
forwarded byte for byte.
"""

from __future__ import annotations

from gateway.auth.webhooks import DEFAULT_MAX_BODY, invalid_signature
from gateway.context import RequestContext
from gateway.http.expect_continue import send_continue
from gateway.http.request_body import read_bounded_body, refuse_declared_oversize
from gateway.metrics import METRICS
from gateway.middleware import StageResult

_TOO_LARGE = "The webhook body is larger than this route allows"


def verify_webhook(ctx: RequestContext) -> StageResult:
    route = ctx.route
    if route is None or route.auth != "webhook" or route.integration is None:
        return None  # every other route passes without a coroutine
    return _verify(ctx, route.integration, route.max_body)


async def _verify(ctx: RequestContext, integration: str, max_body: int | None) -> None:
    runtime = ctx.runtime
    config = runtime.config.integrations[integration]
    limit = max_body or DEFAULT_MAX_BODY
    refuse_declared_oversize(ctx.request, limit, _TOO_LARGE)
    send_continue(ctx)  # every check that needs no body has passed
    # A body:FIELD rate limit may have read it already (same bytes, same bound).
    body = ctx.body if ctx.body is not None else await read_bounded_body(ctx.request, limit, _TOO_LARGE)
    # SECURITY: forged webhooks (fake orders, refunds) — HMAC over the exact bytes received.
    if not runtime.services.integrations.verify(config, body, ctx.request.headers):
        METRICS.auth_failures.labels("webhook_signature").inc()
        raise invalid_signature()
    ctx.body = body
