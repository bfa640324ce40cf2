"""SPEC §3.9 / §8 response check: on a ``login: true`` route, the upstream's answer decides the
attempt the route stage let through — 401/403 count as failures towards the lockout, a
successful write resets the username's count. The rule is
``gateway.ratelimit.lockout.LockoutService.record_outcome``.
"""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.context import RequestContext


async def check_login_outcome(
    ctx: RequestContext, status: int, headers: CIMultiDict[str] | CIMultiDictProxy[str]
) -> None:
    """RESPONSE_CHECKS entry: upstream 401/403 on a login route count as failures."""
    subjects = ctx.login_subjects
    rl = ctx.runtime.rate_limits
    if subjects is None or rl is None:
        return
    await rl.lockouts.record_outcome(subjects, status, ctx.request.method, ctx.request_id)
