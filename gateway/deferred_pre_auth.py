"""Settling a deferred ``pre_auth`` hit (``gateway.ratelimit.deferred``) alone, now: called by
the authentication stage before a full token check, by the route rate-limit stage, and by the
pipeline runner before an early answer. A helper of those stages, not a stage itself: it
clears the context's deferral and applies the pre_auth stage's refusal to the context. It lives
beside ``middleware/``, on the stages' floor, because that folder holds stages only and no stage
imports another (``tests/architecture/test_import_layers.py``).
"""

from __future__ import annotations

from gateway.context import RequestContext
from gateway.ratelimit.verdicts import refuse_pre_auth


async def settle_pre_auth(ctx: RequestContext) -> None:
    """Send a deferred pre_auth hit alone, now (nothing when none waits); its 429 raises here."""
    deferred = ctx.deferred_pre_auth
    if deferred is None:
        return
    ctx.deferred_pre_auth = None
    rl = ctx.runtime.rate_limits
    assert rl is not None
    refuse_pre_auth(ctx, await rl.backend.check(deferred, rl.compiled, "pre_auth", state=False))
