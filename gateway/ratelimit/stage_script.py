"""Every item of a stage in ONE Redis call: one Lua script hits them all and returns the
decisions plus the binding item's window state (issue 13, "one store round trip per request").

The script is the ``limits`` library's own arithmetic, item by item, on the library's own keys
and data layout, so this path and ``limits``' public API (the fallback, the probe, operators'
tools) count in the same buckets:
- moving window: ``acquire_moving_window.lua`` (LINDEX at ``limit - cost``, LPUSH the
  timestamp ``cost`` times, LTRIM, EXPIRE); the window state is ``moving_window.lua``'s binary
  search by LINDEX over the time-sorted list, so no call reads the whole list;
- fixed window: ``incr_expire.lua`` (INCRBY, EXPIRE on the first hit); the state is GET and
  PTTL (PTTL, not the strategy's whole-second TTL: the deny cache trusts this reset time).
The binding item is chosen as ``RateLimitBackend._run`` chooses it: the refusing item, the
refusing item that frees last when several refuse, else the statically strictest one.

Timestamps are the client's ``time.time()`` as ``limits`` sends them (``repr`` of the float),
so entries written here and by the library compare alike. ``tests/unit/ratelimit/
test_stage_conformance.py`` proves the decisions and window numbers equal the library's.
Sliding-window-counter items stay on the public API path.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from limits.util import WindowStats

from gateway.ratelimit.policies import LimitItem
from gateway.ratelimit.resp import ReplyError, RespClient, RespError

FAST_STRATEGIES = frozenset(("moving-window", "fixed-window"))
_KINDS = {"moving-window": "m", "fixed-window": "f"}
ARGS_PER_ITEM = 4

STAGE_SCRIPT = """
local now = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])

-- A stage whose caller has given up (store_timeout: a hung or slow Redis, the commands queued
-- behind it) is not counted: the gateway already answered it by its failure mode.
local clock = redis.call('time')
if tonumber(clock[1]) + tonumber(clock[2]) / 1000000 > tonumber(ARGV[3]) then
    return {'late'}
end

local function spec(i)
    local base = 3 + (i - 1) * 4
    return ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
end

-- limits' acquire_moving_window.lua
local function acquire(key, limit, expiry, amount)
    if amount > limit then
        return false
    end
    local entry = redis.call('lindex', key, limit - amount)
    if entry and tonumber(entry) >= now - expiry then
        return false
    end
    local entries = {}
    for i = 1, amount do
        entries[i] = now
    end
    for i = 1, #entries, 5000 do
        redis.call('lpush', key, unpack(entries, i, math.min(i + 4999, #entries)))
    end
    redis.call('ltrim', key, 0, limit - 1)
    redis.call('expire', key, expiry)
    return true
end

-- limits' incr_expire.lua
local function incr(key, limit, expiry, amount)
    local current = redis.call('incrby', key, amount)
    if tonumber(current) == amount then
        redis.call('expire', key, expiry)
    end
    return current <= limit
end

-- limits' moving_window.lua: binary search for the oldest entry inside the window
local function oldest_entry(key, high, target)
    local low = 0
    local result = nil
    while low <= high do
        local mid = math.floor((low + high) / 2)
        local val = tonumber(redis.call('lindex', key, mid))
        if val and val >= target then
            result = mid
            low = mid + 1
        else
            high = mid - 1
        end
    end
    return result
end

-- the window state: reset time (seconds since the epoch) and remaining
local function state(i)
    local kind, limit, expiry = spec(i)
    local key = KEYS[i]
    if kind == 'm' then
        local index = oldest_entry(key, limit - 1, now - expiry)
        if index then
            -- tostring, as moving_window.lua returns it: limits reports the start at %.14g
            local oldest = tonumber(tostring(tonumber(redis.call('lindex', key, index))))
            return oldest + expiry, limit - (index + 1)
        end
        return now + expiry, limit
    end
    local current = tonumber(redis.call('get', key)) or 0
    local pttl = tonumber(redis.call('pttl', key))
    if pttl < 0 then
        pttl = 0
    end
    return now + pttl / 1000, math.max(0, limit - current)
end

local decisions = {}
local refused = {}
for i = 1, #KEYS do
    local kind, limit, expiry, amount = spec(i)
    local ok
    if kind == 'm' then
        ok = acquire(KEYS[i], limit, expiry, amount)
    else
        ok = incr(KEYS[i], limit, expiry, amount)
    end
    decisions[i] = ok and 1 or 0
    if not ok then
        refused[#refused + 1] = i
    end
end

local binding = wanted
if #refused > 0 then
    binding = refused[1]
end
if binding == 0 then
    return {decisions, 0}
end
local reset, remaining = state(binding)
for r = 2, #refused do
    local other_reset, other_remaining = state(refused[r])
    if other_reset > reset then
        binding, reset, remaining = refused[r], other_reset, other_remaining
    end
end
-- %.17g: the exact double (Redis turns Lua numbers into integers)
return {decisions, binding, remaining, string.format('%.17g', reset)}
"""


class LateReply(RespError):
    """Redis reached the stage after its deadline and counted nothing."""


class StageScript:
    """Runs a whole stage as one ``EVALSHA`` on the coalescing RESP connection."""

    def __init__(self, client: RespClient, key_prefix: str) -> None:
        self.client = client
        self._key_prefix = key_prefix
        self._source = STAGE_SCRIPT.encode()
        self._sha = hashlib.sha1(self._source, usedforsecurity=False).hexdigest()

    @staticmethod
    def supports(checks: Sequence[tuple[LimitItem, str]]) -> bool:
        return all(item.strategy in FAST_STRATEGIES for item, _ in checks)

    async def run(
        self, checks: Sequence[tuple[LimitItem, str]], wanted: int | None, timeout: float = 1.0
    ) -> tuple[list[bool], int | None, WindowStats | None]:
        """Hit every item; the decisions, the binding item's index and its window state.
        ``wanted``: the item whose state an all-admitted stage reports (None: no state then).
        A refused stage always names its binding item and state. ``timeout``: after that many
        seconds Redis no longer counts the stage (its caller has given up). Raises ``RespError``."""
        args: list[str | int] = [self._sha, len(checks)]
        prefix = self._key_prefix
        args.extend(f"{prefix}:{item.item.key_for(item.prefix, value)}" for item, value in checks)
        now = time.time()
        args.append(repr(now))
        args.append(0 if wanted is None else wanted + 1)
        args.append(repr(now + timeout + self.client.clock_offset))
        for item, _ in checks:
            args.extend((_KINDS[item.strategy], item.quota, item.window, item.cost))
        try:
            reply = await self.client.call("EVALSHA", *args)
        except ReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            # A NOSCRIPT reply means the script did not run: nothing was counted, so loading it
            # and running once more cannot count twice (Redis restarted or SCRIPT FLUSH).
            await self.client.call("SCRIPT", "LOAD", self._source)
            reply = await self.client.call("EVALSHA", *args)
        if reply[0] == b"late":
            raise LateReply("the store ran the stage after its deadline; nothing was counted")
        decisions = [bool(flag) for flag in reply[0]]
        binding = int(reply[1])
        if binding == 0:
            return decisions, None, None
        return decisions, binding - 1, WindowStats(float(reply[3]), int(reply[2]))
