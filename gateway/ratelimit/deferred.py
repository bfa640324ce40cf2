"""A ``pre_auth`` hit waiting to go to the store with the route stage's (issue 13: one store
round trip per request).

On a route where nothing between the two stages reads a body or writes a record
(``CompiledLimits.deferrable``), the pre_auth stage leaves this value on the request context
instead of calling the store; the route stage sends both stages' items in one script call that
decides pre_auth's first (``RateLimitBackend.check_in_order``). Whatever else happens first —
a full token verification (the work pre_auth exists to shed), a refusal, an early answer —
settles it alone before (``gateway.deferred_pre_auth.settle_pre_auth``), so its 429
comes first as when it ran in place. The value carries the pre_auth stage's refusal, so no
stage needs another's internals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from gateway.ratelimit.limiter import Verdict
from gateway.ratelimit.policies import LimitItem

Checks = Sequence[tuple[LimitItem, str]]
Ctx = TypeVar("Ctx")  # the request context the refusal is applied to (the stage side's type)


class DeferredPreAuth(Generic[Ctx]):
    __slots__ = ("checks", "refuse")

    def __init__(self, checks: Checks, refuse: Callable[[Ctx, Verdict | None], None]) -> None:
        self.checks = checks
        self.refuse = refuse  # the pre_auth stage's refusal: raises its 429 for a refusing verdict
