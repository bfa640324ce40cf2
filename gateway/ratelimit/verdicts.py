"""What a rate-limit verdict does to a request (SPEC §8, App. C): the ``RateLimit-Policy`` and
``RateLimit`` headers it writes, the 429 it raises (``RateLimited``, or ``LockedOut`` for a
locked login subject), and the mark the access line reports (``"limited"``, ``"shadow"``).

The rate-limit stages (``middleware/rate_limit.py``) pass the request context itself: it
satisfies ``LimitedRequest``, a Protocol, so nothing is built per request.
"""

from __future__ import annotations

from typing import NoReturn, Protocol

from gateway.errors import LockedOut, RateLimited
from gateway.ratelimit.headers import (
    POLICY_HEADER,
    STATE_HEADER,
    refusal_values,
    retry_after,
    state_header,
    state_value,
)
from gateway.ratelimit.limiter import Verdict


class LimitedRequest(Protocol):
    """What a verdict writes on a request: its answer's headers and the access line's mark."""

    response_headers: dict[str, str]
    ratelimit: str | None


def apply_verdict(ctx: LimitedRequest, verdict: Verdict | None) -> None:
    """The headers of ``verdict``'s item (none for a shadow item); raises its 429 when it refuses."""
    if verdict is None:  # on_store_failure: allow while the store is down
        return
    if verdict.shadow:  # App. C: a shadow rule over its limit is reported, never refuses
        ctx.ratelimit = "shadow"
    item = verdict.item
    if item.shadow:  # a stage of shadow items only: they never speak in headers
        return
    headers = ctx.response_headers
    headers[POLICY_HEADER] = item.policy_header
    if verdict.allowed:
        headers[STATE_HEADER] = state_value(item.state_head, verdict.remaining, verdict.reset_in)
        return
    ctx.ratelimit = "limited"
    state, wait = refusal_values(item, verdict.remaining, verdict.reset_in)
    headers[STATE_HEADER] = state
    raise RateLimited(
        "Too many requests; retry later",
        headers={"Retry-After": str(wait)},
        extensions={"retry_after": wait},
    )


def refuse_pre_auth(ctx: LimitedRequest, verdict: Verdict | None) -> None:
    """The pre_auth stage's verdict: its 429, or only the shadow mark (an allowed pre_auth item
    adds no headers of its own). Also the refusal a deferred pre_auth hit carries."""
    if verdict is None:
        return
    if not verdict.allowed:
        apply_verdict(ctx, verdict)  # raises
    elif verdict.shadow:
        ctx.ratelimit = "shadow"


def refuse_locked(ctx: LimitedRequest, verdict: Verdict | None, locked: float) -> NoReturn:
    """A login attempt from a locked IP or username (``locked``: seconds the lockout has left):
    429 ``LockedOut``, with the route policy's headers all the same."""
    if verdict is not None and verdict.shadow:
        ctx.ratelimit = "shadow"
    # SPEC §8: every response of a route with a policy carries them (not a shadow item's)
    if verdict is not None and not verdict.item.shadow:
        ctx.response_headers[POLICY_HEADER] = verdict.item.policy_header
        ctx.response_headers[STATE_HEADER] = state_header(
            verdict.item.policy, verdict.remaining, verdict.reset_in
        )
    wait = retry_after(locked)
    # SECURITY: credential stuffing — a locked IP or username never reaches the upstream.
    raise LockedOut(
        "Too many failed attempts; retry later",
        headers={"Retry-After": str(wait)},
        extensions={"retry_after": wait},
    )
