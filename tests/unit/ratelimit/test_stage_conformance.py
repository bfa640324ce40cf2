"""The one-call stage script decides exactly what ``limits``' public API decides, on the same
keys of a real Redis: random stages (limits, costs, strategies, several items) and random time
steps; two instances stay exact together; lost scripts (SCRIPT FLUSH, a restart) are reloaded
without counting a hit twice."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import pytest
import redis.asyncio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from limits.aio.storage import RedisStorage
from limits.aio.strategies import STRATEGIES, RateLimiter
from limits.util import WindowStats

from gateway.errors import StoreUnavailable
from gateway.ratelimit import stage_script
from gateway.ratelimit.limiter import KEY_PREFIX, RateLimitBackend
from gateway.ratelimit.policies import LimitItem
from gateway.ratelimit.resp import RespClient, RespError
from gateway.ratelimit.stage_script import StageScript
from gateway.state.redis_url import parse_redis_url
from tests.support.redis_server import RedisServer
from tests.unit.ratelimit.conftest import ItemFactory, without_stage_script
from tests.unit.ratelimit.conftest import settings as limit_settings

EXAMPLES = 15 if os.environ.get("CI") == "true" else 60
LIMITS = ("1/second", "3/2seconds", "2/5seconds", "5/minute")
Checks = Sequence[tuple[LimitItem, str]]
Outcome = tuple[list[bool], int | None, WindowStats | None]
Reference = tuple[list[bool], dict[int, WindowStats]]
_values = itertools.count()


class FakeClock:
    """The clock both paths read (``time.time()`` in limits' redis-py bridge and the script)."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


def key_of(item: LimitItem, value: str) -> str:
    return f"{KEY_PREFIX}:{item.item.key_for(item.prefix, value)}"


async def reference_stage(
    paths: Paths, checks: Checks, wanted: int | None, now: Callable[[], float]
) -> Reference:
    """A stage decided through limits' public API only: hit each item, then read the window
    state of every candidate for the binding item (the refusing items, else ``wanted``)."""
    strategies = paths.strategies
    decisions = [await strategies[i.strategy].hit(i.item, i.prefix, v, cost=i.cost) for i, v in checks]
    refused = [index for index, ok in enumerate(decisions) if not ok]
    states = {}
    for index in refused or ([] if wanted is None else [wanted]):
        item, value = checks[index]
        states[index] = await window_state(paths, item, value, now)
    return decisions, states


async def window_state(paths: Paths, item: LimitItem, value: str, now: Callable[[], float]) -> WindowStats:
    """The window state limits' public API reports (it hits nothing), a fixed window's reset
    read from its key's PTTL."""
    stats = await paths.strategies[item.strategy].get_window_stats(item.item, item.prefix, value)
    if item.strategy == "fixed-window":
        # The gateway's documented choice (as the redis-py pipeline before it): PTTL, not
        # limits' TTL rounded to whole seconds; both name the same window end.
        pttl = max(await paths.client.pttl(key_of(item, value)), 0)
        assert abs(stats.reset_time - (now() + pttl / 1000)) <= 0.55
        stats = WindowStats(now() + pttl / 1000, stats.remaining)
    return stats


async def advance(client: redis.asyncio.Redis, keys: list[str], clock: FakeClock, seconds: float) -> None:
    """Move the virtual clock: the timestamps both paths write, and Redis' TTLs alike."""
    clock.now += seconds
    # One script, so every key loses exactly ``seconds``: read-then-write from here let each key
    # keep the real time between its PTTL read and its PEXPIRE, a drift a loaded host made larger
    # than the comparison's tolerance.
    await client.eval(_ADVANCE, len(keys), *keys, int(seconds * 1000))


_ADVANCE = """
for _, key in ipairs(KEYS) do
    local pttl = redis.call('PTTL', key)
    if pttl > 0 then
        local left = pttl - tonumber(ARGV[1])
        if left > 0 then redis.call('PEXPIRE', key, left) else redis.call('DEL', key) end
    end
end
"""


def assert_same(
    fast: Outcome, reference: Reference, checks: Checks, skew: float = 0.0, written_apart: float = 0.01
) -> None:
    """Equal decisions; the binding item is the candidate that frees last (the first such, as
    in limits' order), with equal window state. ``skew``: seconds between the two paths' clocks
    (0 with the shared fake clock). A fixed window's reset comes from its key's PTTL, which runs
    in Redis' real time: keys written ``written_apart`` real seconds apart differ by that much."""
    decisions, states = reference
    assert fast[0] == decisions
    if not states:
        assert fast[1] is None and fast[2] is None
        return
    assert fast[1] is not None and fast[2] is not None
    fixed = any(checks[i][0].strategy == "fixed-window" for i in states)
    tolerance = skew + (max(0.01, written_apart) if fixed else 0.0)
    latest = max(stats.reset_time for stats in states.values())
    ends_last = [i for i in sorted(states) if states[i].reset_time >= latest - tolerance]
    assert fast[1] in ends_last
    if tolerance == 0:
        assert fast[1] == ends_last[0]
    assert fast[2].remaining == states[fast[1]].remaining
    assert abs(fast[2].reset_time - states[fast[1]].reset_time) <= tolerance


async def assert_same_data(client: redis.asyncio.Redis, chosen: list[LimitItem], fast: str, ref: str) -> None:
    """Byte for byte the data limits' own scripts wrote: the same timestamps (as Lua formats
    them) in the same lists, the same counters; so either path can read what the other wrote."""
    for item in chosen:
        if item.strategy == "moving-window":
            read = client.lrange(key_of(item, fast), 0, -1), client.lrange(key_of(item, ref), 0, -1)
        else:
            read = client.get(key_of(item, fast)), client.get(key_of(item, ref))
        got, expected = await asyncio.gather(*read)
        assert got == expected


@dataclass
class Paths:
    script: StageScript
    strategies: dict[str, RateLimiter]
    client: redis.asyncio.Redis
    pool: redis.asyncio.ConnectionPool

    @classmethod
    def open(cls, url: str) -> Paths:
        script = StageScript(RespClient(parse_redis_url(url)))
        pool = redis.asyncio.ConnectionPool.from_url(url)
        storage = RedisStorage(
            "async+redis://", implementation="redispy", key_prefix=KEY_PREFIX, connection_pool=pool
        )
        strategies = {name: factory(storage) for name, factory in STRATEGIES.items()}
        return cls(script, strategies, redis.asyncio.Redis.from_url(url), pool)

    async def close(self) -> None:
        await self.script.client.close()
        await self.client.aclose()
        await self.pool.disconnect()


ITEM = st.tuples(
    st.sampled_from(("moving-window", "fixed-window")), st.sampled_from(LIMITS), st.integers(1, 3)
)
STEP = st.one_of(
    st.tuples(st.just("hit"), st.lists(st.booleans(), min_size=3, max_size=3), st.booleans()),
    st.tuples(st.just("wait"), st.sampled_from((0.25, 0.5, 1.0, 1.5, 2.5))),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Two refusing items that free at the same instant: limits' order (the first) binds.
@example(rules=[("moving-window", "1/second", 1)] * 2, steps=[("hit", [True, True, False], True)] * 2)
@given(rules=st.lists(ITEM, min_size=1, max_size=3), steps=st.lists(STEP, min_size=1, max_size=25))
def test_stage_script_decides_as_limits_public_api(
    redis_url: str, items: ItemFactory, rules: list[tuple[str, str, int]], steps: list[tuple]
) -> None:
    all_items = [
        items(limit, strategy=strategy, cost=cost, index=index)[0]
        for index, (strategy, limit, cost) in enumerate(rules)
    ]
    run = next(_values)
    fast_value, ref_value = f"fast-{run}", f"ref-{run}"
    keys = [key_of(item, value) for item in all_items for value in (fast_value, ref_value)]
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage_script, "time", clock)
        patch.setattr("limits.aio.storage.redis.redispy.time", clock)
        asyncio.run(_drive(redis_url, all_items, steps, fast_value, ref_value, keys, clock))


async def _replay(
    url: str,
    steps: list[tuple],
    keys: list[str],
    clock: FakeClock,
    check: Callable[[Paths, tuple], Awaitable[None]],
) -> None:
    """Play ``steps`` on one pair of paths: a ``("wait", seconds)`` step advances the clock (and the
    keys' TTLs); every other step goes to ``check``."""
    paths = Paths.open(url)
    try:
        for step in steps:
            if step[0] == "wait":
                await advance(paths.client, keys, clock, step[1])
                continue
            await check(paths, step)
    finally:
        await paths.close()


async def _drive(
    url: str,
    all_items: list[LimitItem],
    steps: list[tuple],
    fast: str,
    ref: str,
    keys: list[str],
    clock: FakeClock,
) -> None:
    widest = [0.0]  # the most real time any step put between the two paths' writes

    async def check(paths: Paths, step: tuple) -> None:
        chosen = [item for item, on in zip(all_items, step[1], strict=False) if on] or all_items[:1]
        wanted = min(range(len(chosen)), key=lambda i: chosen[i].strictness) if step[2] else None
        started = time.monotonic()  # real time: a loaded host may put many ms between the writes
        got = await paths.script.run([(item, fast) for item in chosen], wanted)
        expected = await reference_stage(paths, [(item, ref) for item in chosen], wanted, clock.time)
        # A fixed window's PTTL counts from the step that created its key, maybe an earlier one:
        # the two keys' resets differ by that step's gap (plus a millisecond of PTTL rounding each).
        widest[0] = max(widest[0], time.monotonic() - started)
        assert_same(got, expected, [(item, fast) for item in chosen], written_apart=widest[0] + 0.002)
        await assert_same_data(paths.client, chosen, fast, ref)

    await _replay(url, steps, keys, clock, check)


async def test_windows_expire_in_real_time_as_limits_says(redis_url: str, items: ItemFactory) -> None:
    chosen = [items("1/second", strategy="fixed-window")[0], items("3/2seconds", index=1)[0]]
    paths = Paths.open(redis_url)
    try:
        outcomes = []
        for _ in range(3):
            for _ in range(4):
                got = await paths.script.run([(i, "fast") for i in chosen], 0)
                expected = await reference_stage(paths, [(i, "ref") for i in chosen], 0, time.time)
                assert_same(got, expected, [(i, "fast") for i in chosen], skew=0.05)
                outcomes.append(got[0])
            await asyncio.sleep(1.1)  # the 1/second window is over, 3/2seconds is not
        t, f = True, False
        assert outcomes[:4] == [[t, t], [f, t], [f, t], [f, f]]
        assert outcomes[4:8] == [[t, f], [f, f], [f, f], [f, f]]  # the fixed window reset
        assert outcomes[8:10] == [[t, t], [f, t]]  # and now the moving window moved on
    finally:
        await paths.close()


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window"])
async def test_two_instances_on_one_redis_admit_exactly_the_limit(
    redis_url: str, items: ItemFactory, strategy: str
) -> None:
    first, second, public = (RateLimitBackend(redis_url) for _ in range(3))
    await without_stage_script(public)  # limits' own API on the same keys
    (item,) = items("10/minute", strategy=strategy)
    try:
        backends = [first, second, public]
        checks = [(item, first.hash("shared-user"))]
        verdicts = await asyncio.gather(
            *(backends[n % 3].check(checks, limit_settings(timeout=2.0), "route") for n in range(30))
        )
        assert sum(v.allowed for v in verdicts) == 10
        assert all(v.source in ("shared", "cache") for v in verdicts)
    finally:
        for backend in (first, second, public):
            await backend.close()


async def test_script_flush_and_restart_never_double_count(
    redis_server: RedisServer, items: ItemFactory
) -> None:
    tight, loose = items("5/minute;20/hour", strategy="moving-window")
    (fixed,) = items("20/hour", strategy="fixed-window", index=1)
    checks = [(tight, "v"), (loose, "v"), (fixed, "v")]
    paths = Paths.open(redis_server.url)
    try:
        assert (await paths.script.run(checks, 0))[2] == WindowStats(
            pytest.approx(time.time() + 60, abs=1), 4
        )
        await paths.client.script_flush()
        _, _, stats = await paths.script.run(checks, 0)
        assert stats is not None and stats.remaining == 3
        await paths.client.aclose()
        redis_server.stop()
        redis_server.start()  # append-only: the counts survive, the scripts do not
        paths.client = redis.asyncio.Redis.from_url(redis_server.url)
        admitted = 2
        for _ in range(2):  # the first call may meet the dead connection: a store failure
            try:
                decisions, _, stats = await paths.script.run(checks, 0)
            except RespError:
                continue
            assert decisions == [True, True, True]
            admitted += 1
        assert admitted >= 3 and stats is not None and stats.remaining == 5 - admitted
        assert await paths.client.llen(key_of(loose, "v")) == admitted
        assert int(await paths.client.get(key_of(fixed, "v"))) == admitted
    finally:
        await paths.close()


async def test_stages_answered_by_the_failure_mode_are_never_counted(
    redis_server: RedisServer, items: ItemFactory
) -> None:
    """Coalesced commands already on the wire when Redis hangs run when it resumes; the script's
    deadline keeps them from counting requests the gateway already answered (503 or local)."""
    backend = RateLimitBackend(redis_server.url)
    (item,) = items("5/minute")
    checks = [(item, backend.hash("late"))]
    try:
        assert (await backend.check(checks, limit_settings("deny"), "route")).remaining == 4
        redis_server.pause()
        refused = await asyncio.gather(
            *(backend.check(checks, limit_settings("deny"), "route") for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(result, StoreUnavailable) for result in refused)
        redis_server.resume()
        deadline = time.monotonic() + 5
        while backend.store_down:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        verdict = await backend.check(checks, limit_settings("deny"), "route")
        assert verdict.allowed and verdict.remaining == 3 and verdict.source == "shared"
    finally:
        if redis_server.paused:
            redis_server.resume()
        await backend.close()


async def test_hits_timestamped_in_the_past_are_not_taken_for_late_stages(
    redis_url: str, items: ItemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lateness deadline reads the wall clock itself: hits carrying an older timestamp (the
    conformance test's virtual clock lags real time on a slow host) are still counted."""
    clock = FakeClock()
    clock.now -= 30
    monkeypatch.setattr(stage_script, "time", clock)
    backend = RateLimitBackend(redis_url)
    (item,) = items("5/minute")
    checks = [(item, backend.hash("lagging-clock"))]
    try:
        verdict = await backend.check(checks, limit_settings("deny"), "route")
        assert verdict.allowed and verdict.remaining == 4 and verdict.source == "shared"
    finally:
        await backend.close()


# Two stages in one call (pre_auth, then the route's items behind the barrier) decide exactly
# as the two stages called one after the other: the same decisions, binding item and window
# state, and the same data in Redis — a refusing first stage leaves the second's keys untouched.
TWO_STAGE_STEP = st.one_of(
    st.tuples(
        st.just("hit"), st.lists(st.booleans(), min_size=2, max_size=2), st.lists(st.booleans(), min_size=2)
    ),
    st.tuples(st.just("wait"), st.sampled_from((0.25, 0.5, 1.0, 2.5))),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# The first stage refuses on the second request: the route's items stay at one hit.
@example(
    first=[("fixed-window", "1/second", 1)],
    second=[("moving-window", "3/2seconds", 1)],
    steps=[("hit", [True, True], [True, True])] * 3,
)
@given(
    first=st.lists(ITEM, min_size=1, max_size=2),
    second=st.lists(ITEM, min_size=1, max_size=2),
    steps=st.lists(TWO_STAGE_STEP, min_size=1, max_size=20),
)
def test_two_stages_in_one_call_decide_as_one_after_the_other(
    redis_url: str,
    items: ItemFactory,
    first: list[tuple[str, str, int]],
    second: list[tuple[str, str, int]],
    steps: list[tuple],
) -> None:
    stages = [
        [items(limit, strategy=s, cost=cost, index=base + n)[0] for n, (s, limit, cost) in enumerate(rules)]
        for base, rules in ((0, first), (10, second))
    ]
    run = next(_values)
    fast_value, ref_value = f"fast-{run}", f"ref-{run}"
    keys = [key_of(item, value) for stage in stages for item in stage for value in (fast_value, ref_value)]
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage_script, "time", clock)
        patch.setattr("limits.aio.storage.redis.redispy.time", clock)
        asyncio.run(_drive_two(redis_url, stages, steps, fast_value, ref_value, keys, clock))


async def _drive_two(
    url: str,
    stages: list[list[LimitItem]],
    steps: list[tuple],
    fast: str,
    ref: str,
    keys: list[str],
    clock: FakeClock,
) -> None:
    widest = [0.0]  # the most real time any step put between the two paths' writes (see _drive)

    async def check(paths: Paths, step: tuple) -> None:
        before, after = (
            [item for item, on in zip(stage, toggles, strict=False) if on] or stage[:1]
            for stage, toggles in zip(stages, step[1:], strict=True)
        )
        wanted = min(range(len(after)), key=lambda i: after[i].strictness)
        split = len(before)
        started = time.monotonic()  # real time between the writes (see assert_same)
        got = await paths.script.run([(i, fast) for i in [*before, *after]], split + wanted, barrier=split)
        first = await paths.script.run([(i, ref) for i in before], None)
        if not all(first[0]):  # the route stage is never reached
            assert got[0] == first[0] and first[1] is not None
            expected, binding = first[2], first[1]
        else:
            second = await paths.script.run([(i, ref) for i in after], wanted)
            assert got[0] == first[0] + second[0] and second[1] is not None
            expected, binding = second[2], split + second[1]
        # Fixed windows' PTTLs run in real time, from the step that created the key, maybe an
        # earlier one than this: the widest gap so far, as _drive (this step's alone was short).
        widest[0] = max(widest[0], time.monotonic() - started)
        tolerance = max(0.01, widest[0] + 0.002)
        assert got[1] is not None and got[2] is not None and expected is not None
        if got[1] != binding:
            # A refusing fixed window and another refusing item that free within the real time
            # between the two paths' writes: either may bind (assert_same allows the same). Only
            # a fixed window's reset runs in real time, so one of the two is one (a moving window
            # refused by a cost above its limit frees exactly a window after the virtual now, a
            # fixed one created in the same step a PTTL's rounding earlier or later).
            items_in_order = [*before, *after]
            mine, theirs = items_in_order[got[1]], items_in_order[binding]
            assert "fixed-window" in (mine.strategy, theirs.strategy)
            own = await window_state(paths, mine, ref, clock.time)  # got's item on the ref side
            assert abs(own.reset_time - expected.reset_time) <= tolerance
            expected = own
        assert got[2].remaining == expected.remaining
        assert abs(got[2].reset_time - expected.reset_time) <= tolerance
        await assert_same_data(paths.client, [*stages[0], *stages[1]], fast, ref)

    await _replay(url, steps, keys, clock, check)


async def test_a_refusing_pre_auth_leaves_the_route_items_uncounted(
    redis_url: str, items: ItemFactory
) -> None:
    """The backend's one-call path: pre_auth refused → no route verdict, the route's keys never
    hit, the deny cache remembers pre_auth's bucket; an admitted pair reports the route's state."""
    backend = RateLimitBackend(redis_url)
    (pre,) = items("2/minute", strategy="fixed-window", index=0)
    user, tenant = items("3/minute", index=1)[0], items("10/minute", index=2)[0]
    value = backend.hash("one-call")
    pre_checks, route_checks = [(pre, value)], [(user, value), (tenant, value)]
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        for remaining in (2, 1):
            before, after = await backend.check_in_order(pre_checks, route_checks, limit_settings())
            assert before is not None and before.allowed
            assert after is not None and after.allowed and after.item is user and after.remaining == remaining
        before, after = await backend.check_in_order(pre_checks, route_checks, limit_settings())
        assert before is not None and not before.allowed and before.source == "shared" and after is None
        assert await client.llen(key_of(user, value)) == 2
        assert await client.llen(key_of(tenant, value)) == 2
        assert int(await client.get(key_of(pre, value))) == 3  # counted as check() counts it
        assert not backend.can_defer(pre_checks)  # now answered from memory, no store call
        before, after = await backend.check_in_order(pre_checks, route_checks, limit_settings())
        assert before is not None and before.source == "cache" and after is None
        assert int(await client.get(key_of(pre, value))) == 3
    finally:
        await client.aclose()
        await backend.close()


async def test_one_call_on_a_hung_store_falls_back_stage_by_stage(
    redis_server: RedisServer, items: ItemFactory
) -> None:
    """A failed one-call pair trips the breaker once and then goes the failure mode's way for
    each stage, as two calls would: local counts (pre_auth refusing first), or 503 (deny)."""
    backend = RateLimitBackend(redis_server.url)
    (pre,) = items("1/minute", index=0)
    (user,) = items("5/minute", index=1)
    value = backend.hash("hung")
    try:
        redis_server.pause()
        before, after = await backend.check_in_order(
            [(pre, value)], [(user, value)], limit_settings("local", 0.2)
        )
        assert backend.store_down and before is not None and before.source == "local"
        assert after is not None and after.source == "local" and after.remaining == 4
        before, after = await backend.check_in_order([(pre, value)], [(user, value)], limit_settings("local"))
        assert before is not None and not before.allowed and after is None
        with pytest.raises(StoreUnavailable):
            await backend.check_in_order([(pre, value)], [(user, value)], limit_settings("deny"))
    finally:
        if redis_server.paused:
            redis_server.resume()
        await backend.close()


# Lists longer than the script's LRANGE head (stage_script.HEAD): the window state's binary
# search probes past it (LINDEX), or knows the list ended inside it. Ordered lists, and
# unordered ones as instances with skewed clocks write them.
LONG_LIMITS = ("17/second", "24/second", "50/second", "100/2seconds")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.sampled_from(LONG_LIMITS),
    fresh=st.integers(0, 110),  # entries inside the window
    stale=st.integers(0, 40),  # and older ones
    swaps=st.integers(0, 6),  # neighbours swapped: an unordered list
    seed=st.integers(0, 2**32),
    cost=st.integers(1, 2),
)
def test_the_window_state_of_long_lists_is_limits_own(
    redis_url: str,
    items: ItemFactory,
    limit: str,
    fresh: int,
    stale: int,
    swaps: int,
    seed: int,
    cost: int,
) -> None:
    (item,) = items(limit, cost=cost, index=40)
    run = next(_values)
    fast_value, ref_value = f"fast-{run}", f"ref-{run}"
    clock = FakeClock()
    rng = random.Random(seed)
    window = item.window
    ages = sorted(
        [rng.uniform(0.0, window * 0.95) for _ in range(fresh)]
        + [rng.uniform(window * 1.05, window * 3) for _ in range(stale)]
    )
    for _ in range(swaps if len(ages) > 1 else 0):
        at = rng.randrange(len(ages) - 1)
        ages[at], ages[at + 1] = ages[at + 1], ages[at]
    entries = ages  # newest first: the list's head, as LPUSH in turn leaves it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage_script, "time", clock)
        patch.setattr("limits.aio.storage.redis.redispy.time", clock)
        asyncio.run(_drive_long(redis_url, item, entries, fast_value, ref_value, clock))


async def _drive_long(
    url: str, item: LimitItem, ages: list[float], fast: str, ref: str, clock: FakeClock
) -> None:
    paths = Paths.open(url)
    try:
        if ages:
            for value in (fast, ref):  # RPUSH in order: index 0 holds the first age
                await paths.client.rpush(key_of(item, value), *(clock.now - age for age in ages))
        got = await paths.script.run([(item, fast)], 0)
        expected = await reference_stage(paths, [(item, ref)], 0, clock.time)
        assert_same(got, expected, [(item, fast)])
        await assert_same_data(paths.client, [item], fast, ref)
    finally:
        await paths.close()
