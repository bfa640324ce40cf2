"""SPEC §3.9 / §8 response check: on a ``login: true`` route, the upstream's answer decides the
attempt the route stage let through — 401/403 count as failures towards the lockout, a
successful write resets the username's count. The rule is
``gateway.ratelimit.lockout.LockoutService.record_outcome``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import RequestContext


def check_login_outcome(
    ctx: RequestContext, status: int, headers: CIMultiDict[str] | CIMultiDictProxy[str]
) -> Coroutine[Any, Any, None] | None:
    """RESPONSE_CHECKS entry: upstream 401/403 on a login route count as failures. Only a login
    route's answer waits (on the store), so only then is there a coroutine to await."""
    subjects = ctx.login_subjects
    if subjects is None:  # not a login route: every other answer
        return None
    rl = ctx.runtime.rate_limits
    if rl is None:
        return None
    return rl.lockouts.record_outcome(subjects, status, ctx.request.method, ctx.request_id)
