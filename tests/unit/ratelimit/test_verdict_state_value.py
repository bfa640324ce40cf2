"""``apply_verdict`` formats an admitted request's ``RateLimit`` value inline (every request of a
limited route): it must be exactly ``headers.state_value``'s, whatever the remaining count and
the time to the reset (negative, fractional, whole)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from gateway.ratelimit.headers import state_value
from gateway.ratelimit.limiter import Verdict
from gateway.ratelimit.model import RateLimitRule
from gateway.ratelimit.policies import compile_rule
from gateway.ratelimit.verdicts import apply_verdict

ITEMS = compile_rule("policy:api", "api", 0, RateLimitRule(key="user", limit="50/second;2000/minute"))


@dataclass
class Request:
    response_headers: dict[str, str] = field(default_factory=dict)
    ratelimit: str | None = None


@given(
    index=st.sampled_from(range(len(ITEMS))),
    remaining=st.integers(-3, 10**7),
    reset_in=st.one_of(st.floats(-5.0, 1e6, allow_nan=False), st.integers(-5, 10**6).map(float)),
)
def test_the_inline_state_value_is_state_value(index: int, remaining: int, reset_in: float) -> None:
    item = ITEMS[index]
    request = Request()
    apply_verdict(request, Verdict(True, item, remaining, reset_in, "shared"))
    assert request.response_headers["RateLimit"] == state_value(item.state_head, remaining, reset_in)
    assert request.ratelimit is None
