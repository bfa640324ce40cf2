"""A ``pre_auth`` hit waiting to go to the store with the route stage's (issue 13: one store
round trip per request).

On a route where nothing between the two stages reads a body or writes a record and the stage
script takes every item of both stages (``CompiledLimits.deferrable``), the pre_auth stage
leaves its checks on the request context instead of calling the store; the route stage sends
both stages' items in one script call that decides pre_auth's first
(``RateLimitBackend.decide_in_order``). Whatever else happens first — a full token verification
(the work pre_auth exists to shed), a refusal, an early answer — settles it alone before
(``gateway.deferred_pre_auth.settle_pre_auth``), so its 429 comes first as when it ran in place.
The context holds the checks themselves (no wrapper object per request): the refusal applied to
them is always the pre_auth stage's, ``verdicts.refuse_pre_auth``.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.ratelimit.policies import LimitItem

Checks = Sequence[tuple[LimitItem, str]]
