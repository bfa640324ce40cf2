"""``RateLimitBackend._fast_verdict`` keeps a stage's admitted verdict without window state (the
pre_auth stage's, on every request) per item instead of building it per answer: it must be the
very verdict a fresh build gives, for any item, static index and shadow flag, whatever was
answered before; the remembered ones stay bounded."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.limiter import ADMITTED_LIMIT, RateLimitBackend, Verdict
from gateway.ratelimit.model import RateLimitRule
from gateway.ratelimit.policies import LimitItem, compile_rule

EXAMPLES = 30 if os.environ.get("CI") == "true" else 200
RULES = (
    RateLimitRule(key="ip", limit="100000/second", strategy="fixed-window"),
    RateLimitRule(key="user", limit="50/second;2000/minute"),
    RateLimitRule(key="tenant", limit="1000/second", mode="shadow"),
)
ITEMS: tuple[LimitItem, ...] = tuple(
    item for index, rule in enumerate(RULES) for item in compile_rule("policy:p", "p", index, rule)
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    answers=st.lists(
        st.tuples(
            st.lists(st.sampled_from(ITEMS), min_size=1, max_size=4),
            st.integers(min_value=0, max_value=3),
            st.booleans(),
            st.sampled_from(["pre_auth", "route"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_an_admitted_stage_without_state_gets_the_verdict_a_fresh_build_gives(
    answers: list[tuple[list[LimitItem], int, bool, str]],
) -> None:
    backend = RateLimitBackend("local:/nonexistent")
    for items, static, shadow, stage in answers:
        checks = [(item, "v") for item in items]
        static %= len(checks)
        verdict = backend._fast_verdict(checks, stage, static, True, None, 0, 0.0, shadow)
        expected = Verdict(True, checks[static][0], -1, 0.0, "shared", shadow)
        assert verdict == expected
        assert verdict.item is checks[static][0]  # the item itself, not an equal one


def test_remembered_admitted_verdicts_stay_bounded() -> None:
    """Items come from configs (a reload compiles new ones): however many, at most
    ``ADMITTED_LIMIT`` verdicts are kept."""
    backend = RateLimitBackend("local:/nonexistent")
    rule = RateLimitRule(key="ip", limit="5/second")
    for index in range(ADMITTED_LIMIT + 50):
        (item,) = compile_rule("pre_auth", "pre_auth", index, rule)
        verdict = backend._fast_verdict([(item, "v")], "pre_auth", 0, True, None, 0, 0.0)
        assert verdict.item is item
        assert len(backend._admitted) <= ADMITTED_LIMIT
