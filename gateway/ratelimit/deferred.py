"""A ``pre_auth`` hit waiting to go to the store with the route stage's (issue 13: one store
round trip per request).

On a route where nothing between the two stages reads a body or writes a record
(``CompiledLimits.deferrable``), the pre_auth stage leaves this value on the request context
instead of calling the store; the route stage sends both stages' items in one script call that
decides pre_auth's first (``RateLimitBackend.check_in_order``). Whatever else happens first —
a full token verification (the work pre_auth exists to shed), a refusal, an early answer —
settles it alone before (``settle_pre_auth``), so its 429 comes first as when it ran in place.
No stage needs another's internals: they only call ``settle_pre_auth``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.ratelimit.limiter import Verdict
from gateway.ratelimit.policies import LimitItem

if TYPE_CHECKING:
    from gateway.context import RequestContext

Checks = Sequence[tuple[LimitItem, str]]
Refuse = Callable[["RequestContext", Verdict | None], None]


class DeferredPreAuth:
    __slots__ = ("checks", "refuse")

    def __init__(self, checks: Checks, refuse: Refuse) -> None:
        self.checks = checks
        self.refuse = refuse  # the pre_auth stage's refusal: raises its 429 for a refusing verdict


async def settle_pre_auth(ctx: RequestContext) -> None:
    """Send a deferred pre_auth hit alone, now (nothing when none waits); its 429 raises here."""
    deferred = ctx.deferred_pre_auth
    if deferred is None:
        return
    ctx.deferred_pre_auth = None
    rl = ctx.runtime.rate_limits
    assert rl is not None
    deferred.refuse(ctx, await rl.backend.check(deferred.checks, rl.compiled, "pre_auth", state=False))
