"""The stage script frames its EVALSHA itself (the items' fixed arguments framed once): the
bytes must be exactly what ``hiredis.pack_command`` makes of the same arguments, or Redis
would read other keys and numbers than the ones the limiter meant."""

from __future__ import annotations

import os
import random
import struct
import time

import hiredis
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.limiter import KEY_PREFIX
from gateway.ratelimit.model import RateLimitRule
from gateway.ratelimit.policies import LimitItem, compile_rule
from gateway.ratelimit.resp import RespClient
from gateway.ratelimit.stage_script import FRAMED_LIMIT, KEY_CACHE_LIMIT, StageScript
from gateway.state.redis_url import parse_redis_url

Checks = list[tuple[LimitItem, str]]
EXAMPLES = 30 if os.environ.get("CI") == "true" else 200
RULES = (
    RateLimitRule(key="ip", limit="100000/second", strategy="fixed-window"),
    RateLimitRule(key="user", limit="50/second;2000/minute"),
    RateLimitRule(key="tenant", limit="1000/second", cost=3),
    RateLimitRule(key="header:x-api-key", limit="7/5minutes", strategy="fixed-window", cost=2),
)
ITEMS: tuple[LimitItem, ...] = tuple(
    item for index, rule in enumerate(RULES) for item in compile_rule("policy:p", "p", index, rule)
)
# A client that is never connected: framing needs no Redis.
SCRIPT = StageScript(RespClient(parse_redis_url("redis://127.0.0.1:1/0")))


def reference(
    checks: list[tuple[LimitItem, str]], now: float, wanted: int, late: float, barrier: int
) -> bytes:
    args: list[str | int | bytes] = ["EVALSHA", SCRIPT._sha, len(checks)]
    args += [f"{KEY_PREFIX}:{item.item.key_for(item.prefix, value)}" for item, value in checks]
    args.append(struct.pack("<ddII", now, late, wanted, barrier))  # the script's ARGV[1]
    for item, _ in checks:  # one argument per item: the script's ITEM struct
        kind, limit, expiry, amount, index, trim = item.store_args
        texts = (expiry, amount, index, trim)
        numbers = struct.pack("<cddd", kind.encode(), int(limit), int(expiry), int(amount))
        args.append(numbers + b"".join(bytes((len(text),)) + text.encode() for text in texts))
    return hiredis.pack_command(tuple(args))


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    picks=st.lists(
        st.tuples(st.sampled_from(ITEMS), st.text(min_size=0, max_size=40)), min_size=1, max_size=6
    ),
    now=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    late=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    wanted=st.integers(min_value=0, max_value=12),
    barrier=st.integers(min_value=0, max_value=12),
)
def test_the_frame_is_what_hiredis_packs(
    picks: list[tuple[LimitItem, str]], now: float, late: float, wanted: int, barrier: int
) -> None:
    # st.text covers non-ASCII key values (a user's sub in any script): the length is in bytes
    assert SCRIPT.frame(picks, now, wanted, late, barrier) == reference(picks, now, wanted, late, barrier)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    stages=st.lists(
        st.tuples(
            st.lists(st.tuples(st.sampled_from(ITEMS), st.text(max_size=20)), min_size=1, max_size=4),
            st.lists(st.tuples(st.sampled_from(ITEMS), st.text(max_size=20)), max_size=4),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    ),
    now=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    wanted=st.integers(min_value=0, max_value=8),
)
def test_two_stages_framed_from_remembered_tuples_are_what_hiredis_packs(
    stages: list[tuple[Checks, Checks, bool]], now: float, wanted: int
) -> None:
    """A stage's checks tuple is framed once and reused (the memos hand out one tuple per address
    and identity), a second stage's follow the first's: every frame is still the very bytes of
    the two stages' items in one command, whatever was framed before it."""
    script = StageScript(RespClient(parse_redis_url("redis://127.0.0.1:1/0")))
    remembered = [(tuple(first), tuple(second)) for first, second, _ in stages]
    for turn in range(2):  # the second round frames every tuple from the memo, at another time
        at, want = now + turn, (wanted + turn) % 9
        for (first, second, as_lists), (kept_first, kept_second) in zip(stages, remembered, strict=True):
            one, two = (first, second) if as_lists else (kept_first, kept_second)
            expected = reference([*first, *second], at, want, at + 1, len(first))
            assert script.frame(one, at, want, at + 1, len(first), two) == expected
            alone = reference(first, at, want, at + 1, 0)
            assert script.frame(one, at, want, at + 1, 0) == alone


def test_framed_tuples_stay_bounded_and_lists_are_never_remembered() -> None:
    """SECURITY: memory exhaustion — addresses and identities vary freely: at most
    ``FRAMED_LIMIT`` framed tuples are held; a caller's list (built for one request) is never kept."""
    script = StageScript(RespClient(parse_redis_url("redis://127.0.0.1:1/0")))
    for n in range(20):
        script.frame([(ITEMS[0], f"list-{n}")], 1.5, 0, 2.5, 0)
    assert not script._framed
    for n in range(FRAMED_LIMIT + 100):
        checks = ((ITEMS[0], f"client-{n}"),)
        assert script.frame(checks, 1.5, 0, 2.5, 0) == reference(list(checks), 1.5, 0, 2.5, 0)
        assert len(script._framed) <= FRAMED_LIMIT


def test_remembered_keys_frame_alike_and_stay_bounded() -> None:
    """A key framed from the cache is the same bytes; the two items of one rule (one key head)
    keep their own keys; a flood of fresh values (attacker-chosen header values) holds at most
    ``KEY_CACHE_LIMIT`` keys."""
    script = StageScript(RespClient(parse_redis_url("redis://127.0.0.1:1/0")))
    checks = [(item, "v") for item in ITEMS]
    assert ITEMS[1].store_key_head == ITEMS[2].store_key_head  # 50/second and 2000/minute
    first = script.frame(checks, 1.5, 1, 2.5, 0)
    assert script.frame(checks, 1.5, 1, 2.5, 0) == first == reference(checks, 1.5, 1, 2.5, 0)
    # SECURITY: memory exhaustion — values vary freely; the cache is cleared when full.
    for n in range(KEY_CACHE_LIMIT + 100):
        flood = [(ITEMS[-1], f"fresh-{n}")]
        assert script.frame(flood, 1.5, 0, 2.5, 0) == reference(flood, 1.5, 0, 2.5, 0)
        assert len(ITEMS[-1].store_keys) <= KEY_CACHE_LIMIT
    assert script.frame(checks, 1.5, 1, 2.5, 0) == first


def test_a_multibyte_value_is_framed_by_its_byte_length() -> None:
    item = ITEMS[1]
    framed = SCRIPT.frame([(item, "ü")], 1.5, 1, 2.5, 0)
    key = f"{KEY_PREFIX}:{item.item.key_for(item.prefix, 'ü')}".encode()
    assert b"$%d\r\n%b\r\n" % (len(key), key) in framed
    assert len(key) == len(f"{KEY_PREFIX}:{item.item.key_for(item.prefix, 'ü')}") + 1


async def test_redis_lua_reads_a_packed_timestamp_as_the_very_double(redis_url: str) -> None:
    """The script gets the double's 8 bytes where limits sends ``repr``: Redis' Lua must read
    both as the same number, and push it as the same bytes (the list entries both paths
    compare)."""
    client = redis.asyncio.Redis.from_url(redis_url)
    rng = random.Random(7)
    moments = [time.time(), 0.1, 1e9 + 0.5, *(rng.uniform(1.6e9, 2.2e9) for _ in range(200))]
    try:
        for moment in moments:
            same, pushed_hex, pushed_repr = await client.eval(
                "redis.call('del', KEYS[1], KEYS[2])"
                " redis.call('lpush', KEYS[1], (struct.unpack('<d', ARGV[1])))"
                " redis.call('lpush', KEYS[2], tonumber(ARGV[2]))"
                " return {struct.unpack('<d', ARGV[1]) == tonumber(ARGV[2]) and 1 or 0,"
                " redis.call('lindex', KEYS[1], 0), redis.call('lindex', KEYS[2], 0)}",
                2,
                "frame:packed",
                "frame:repr",
                struct.pack("<d", moment),
                repr(moment),
            )
            assert same == 1, moment
            assert pushed_hex == pushed_repr, moment
    finally:
        await client.aclose()
