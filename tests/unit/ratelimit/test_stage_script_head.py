"""The stage script reads the wanted item's list head just BEFORE its hit (one LRANGE instead of
a LINDEX for the hit and an LRANGE after it): the hit's LINDEX answered from that head, and the
window state computed from the pushed entries followed by it, must be exactly what ``limits``'
public API decides and reports — for lists shorter and longer than the head, ordered or not (as
instances with skewed clocks write them), costs above one, the item placed anywhere in the
stage, and its key hit twice in one stage (a policy listed twice: the head is stale then)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ratelimit import stage_script
from gateway.ratelimit.policies import LimitItem
from tests.unit.ratelimit.conftest import ItemFactory
from tests.unit.ratelimit.test_stage_conformance import (
    EXAMPLES,
    FakeClock,
    Paths,
    assert_same,
    assert_same_data,
    key_of,
    reference_stage,
)

_values = itertools.count()
# around the script's LRANGE head (stage_script.HEAD = 16): inside it, at it, past it
LIMITS = ("3/second", "15/second", "16/second", "17/second", "40/2seconds")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.sampled_from(LIMITS),
    fresh=st.integers(0, 45),  # entries inside the window
    stale=st.integers(0, 20),  # older ones
    future=st.integers(0, 2),  # written by an instance whose clock runs ahead
    swaps=st.integers(0, 5),  # neighbours swapped: an unordered list
    seed=st.integers(0, 2**32),
    cost=st.integers(1, 3),
    place=st.integers(0, 1),  # the wanted item first or second in its stage
    hits=st.integers(1, 3),
)
def test_the_state_read_before_the_hit_is_limits_own(
    redis_url: str,
    items: ItemFactory,
    limit: str,
    fresh: int,
    stale: int,
    future: int,
    swaps: int,
    seed: int,
    cost: int,
    place: int,
    hits: int,
) -> None:
    (item,) = items(limit, cost=cost, index=60)
    (other,) = items("1000/second", index=61)  # a loose item beside it, never binding
    run = next(_values)
    clock = FakeClock()
    rng = random.Random(seed)
    window = item.window
    ages = sorted(
        [-rng.uniform(0.01, 0.5) for _ in range(future)]
        + [rng.uniform(0.0, window * 0.95) for _ in range(fresh)]
        + [rng.uniform(window * 1.05, window * 3) for _ in range(stale)]
    )
    for _ in range(swaps if len(ages) > 1 else 0):
        at = rng.randrange(len(ages) - 1)
        ages[at], ages[at + 1] = ages[at + 1], ages[at]
    stage = [other, item] if place else [item, other]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage_script, "time", clock)
        patch.setattr("limits.aio.storage.redis.redispy.time", clock)
        asyncio.run(_drive(redis_url, stage, place, ages, f"fast-{run}", f"ref-{run}", clock, hits))


async def _drive(
    url: str,
    stage: list[LimitItem],
    wanted: int,
    ages: list[float],
    fast: str,
    ref: str,
    clock: FakeClock,
    hits: int,
) -> None:
    paths = Paths.open(url)
    item = stage[wanted]
    try:
        if ages:
            for value in (fast, ref):  # RPUSH in order: index 0 holds the first age
                await paths.client.rpush(key_of(item, value), *(clock.now - age for age in ages))
        for _ in range(hits):  # admitted and refused hits alike
            got = await paths.script.run([(i, fast) for i in stage], wanted)
            expected = await reference_stage(paths, [(i, ref) for i in stage], wanted, clock.time)
            assert_same(got, expected, [(i, fast) for i in stage])
            await assert_same_data(paths.client, stage, fast, ref)
            clock.now += 0.001
    finally:
        await paths.close()


@pytest.mark.parametrize("limit", ["4/minute", "30/minute"])
async def test_the_wanted_key_hit_twice_in_one_stage_is_read_afresh(
    redis_url: str, items: ItemFactory, limit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A route listing one policy twice hits its keys twice in one stage: the window state after
    both hits is the list as it is then, not the head read before the first hit."""
    clock = FakeClock()
    monkeypatch.setattr(stage_script, "time", clock)
    monkeypatch.setattr("limits.aio.storage.redis.redispy.time", clock)
    (item,) = items(limit, index=62)
    run = next(_values)
    fast, ref = f"fast-{run}", f"ref-{run}"
    paths = Paths.open(redis_url)
    try:
        states = []
        for _ in range(int(limit.split("/")[0]) // 2 + 2):  # through to refusals
            got = await paths.script.run([(item, fast), (item, fast)], 0)
            expected = await reference_stage(paths, [(item, ref), (item, ref)], 0, clock.time)
            assert got[0] == expected[0]
            assert got[2] is not None and got[1] is not None
            assert got[2].remaining == expected[1][got[1]].remaining
            states.append(got[2].remaining)
            await assert_same_data(paths.client, [item], fast, ref)
        quota = int(limit.split("/")[0])
        assert states[:2] == [quota - 2, quota - 4]  # both hits counted in the state
    finally:
        await paths.close()
