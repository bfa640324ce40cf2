"""Every item of a stage in ONE Redis call: one Lua script hits them all and returns the
decisions plus the binding item's window state (issue 13, "one store round trip per request").

The script is the ``limits`` library's own arithmetic, item by item, on the library's own keys
and data layout, so this path and ``limits``' public API (the fallback, the probe, operators'
tools) count in the same buckets:
- moving window: ``acquire_moving_window.lua`` (LINDEX at ``limit - cost``, LPUSH the
  timestamp ``cost`` times, LTRIM when the list outgrew the limit, EXPIRE); the window state is
  ``moving_window.lua``'s binary search, probe for probe, its first probes answered from one
  LRANGE of the list's head, so no call reads the whole list;
- fixed window: ``incr_expire.lua`` (INCRBY, EXPIRE on the first hit); the state is GET and
  PTTL (PTTL, not the strategy's whole-second TTL: the deny cache trusts this reset time).
The binding item is chosen as ``RateLimitBackend._run`` chooses it: the refusing item, the
refusing item that frees last when several refuse, else the statically strictest one.

Timestamps are the client's ``time.time()``, the very double ``limits`` sends (it sends the
``repr``; this path sends the double's 8 bytes, ``struct.pack('<d')``, which Redis' Lua reads
back with its ``struct.unpack('<d')`` bit for bit, at a fraction of ``repr``'s or even
``float.hex()``'s cost), compared as numbers and pushed as a Lua
number, as the library's Lua pushes them, so the lists hold
the same bytes whichever path wrote them (Redis formats that number, %.17g or shortest form by
version). Redis' CPU goes mostly
per ``redis.call`` (command lookup, key lookups, argument objects) and to sprintf for any Lua
number handed to a command, so the script makes few calls and passes ready strings
(``LimitItem.store_args``). ``tests/unit/ratelimit/
test_stage_conformance.py`` proves the decisions and window numbers equal the library's.
Sliding-window-counter items stay on the public API path.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from collections.abc import Sequence
from time import time as wall_clock

from limits.util import WindowStats

from gateway.ratelimit.policies import LimitItem
from gateway.ratelimit.resp import ReplyError, RespClient, RespError
from gateway.ratelimit.script_args import bulk_strings

ARGS_PER_ITEM = 6  # script_args.item_args
HEAD = 16  # list entries one LRANGE reads for the window state's first probes

STAGE_SCRIPT = """
-- ARGV: the time; the wanted item (0: none); the deadline; the barrier (items 1..barrier are a
-- stage of their own, decided first; 0: none); then per item script_args.item_args' six
-- strings (kind m/f; M/F: a shadow item, counted alike but never refusing). Arguments reach
-- redis.call as strings where they can: Redis formats a Lua number argument with sprintf on
-- every call (the timestamp stays a number).
local now = struct.unpack('<d', ARGV[1])  -- the client's double, its 8 bytes as they are
local wanted = tonumber(ARGV[2])
local barrier = tonumber(ARGV[4])
local call = redis.call

-- A stage whose caller has given up (store_timeout: a hung or slow Redis, the commands queued
-- behind it) is not counted: the gateway already answered it by its failure mode.
local clock = call('time')
if tonumber(clock[1]) + tonumber(clock[2]) / 1000000 > struct.unpack('<d', ARGV[3]) then
    return {'late'}
end

-- limits' acquire_moving_window.lua; LTRIM only when the list outgrew the limit (it would be a
-- no-op otherwise, and that is most hits)
local function acquire(key, b)
    local limit, amount = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 4])
    if amount > limit then
        return false
    end
    local entry = call('lindex', key, ARGV[b + 5])
    if entry and tonumber(entry) >= now - tonumber(ARGV[b + 3]) then
        return false
    end
    local length
    if amount == 1 then
        length = call('lpush', key, now)  -- a number, as limits pushes it: the same bytes
    else
        local entries = {}
        for i = 1, amount do
            entries[i] = now
        end
        for i = 1, amount, 5000 do
            length = call('lpush', key, unpack(entries, i, math.min(i + 4999, amount)))
        end
    end
    if length > limit then
        call('ltrim', key, '0', ARGV[b + 6])
    end
    call('expire', key, ARGV[b + 3])
    return true
end

-- limits' incr_expire.lua
local function incr(key, b)
    local current = call('incrby', key, ARGV[b + 4])
    if current == tonumber(ARGV[b + 4]) then
        call('expire', key, ARGV[b + 3])
    end
    return current <= tonumber(ARGV[b + 2])
end

-- The window state: reset time (for comparing refusing items), remaining, and what the client
-- computes the exact reset from (the oldest entry inside the window, or the PTTL).
local function state(i)
    local b = 4 + (i - 1) * 6
    local key = KEYS[i]
    local limit, expiry = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local kind = ARGV[b + 1]
    if kind == 'f' or kind == 'F' then
        local current = tonumber(call('get', key)) or 0
        local pttl = call('pttl', key)
        if pttl < 0 then
            pttl = 0
        end
        return now + pttl / 1000, math.max(0, limit - current), pttl
    end
    -- limits' moving_window.lua binary search, probe for probe (so an unsorted list, written
    -- by instances with skewed clocks, gives its answer too); the first HEAD entries come
    -- from one LRANGE instead of one LINDEX per probe
    local target = now - expiry
    local high = limit - 1
    local head = call('lrange', key, '0', high < HEAD and ARGV[b + 6] or 'HEAD_END')
    -- fewer than HEAD entries: that is the whole list, and LINDEX past its end is nil (the
    -- script runs atomically, nothing changes the list meanwhile), so no probe needs a call
    local whole = #head < HEAD
    local low, index, oldest = 0, nil, nil
    while low <= high do
        local mid = math.floor((low + high) / 2)
        local raw
        if mid < HEAD then
            raw = head[mid + 1]
        elseif not whole then
            raw = call('lindex', key, string.format('%d', mid))
        end
        local value = raw and tonumber(raw)
        if value and value >= target then
            index, oldest = mid, raw
            low = mid + 1
        else
            high = mid - 1
        end
    end
    if index then
        -- tostring, as moving_window.lua returns it: limits reports the start at %.14g
        oldest = tostring(tonumber(oldest))
        return tonumber(oldest) + expiry, limit - (index + 1), oldest
    end
    return now + expiry, limit, false
end

local decisions = {}
local refused = {}
for i = 1, #KEYS do
    if i == barrier + 1 and #refused > 0 then
        -- The first stage refused: the later one is not reached, as if it ran after it (its
        -- items untouched, not counted); the reply's decisions stop at the barrier.
        break
    end
    local b = 4 + (i - 1) * 6
    local kind = ARGV[b + 1]
    local ok
    if kind == 'm' or kind == 'M' then
        ok = acquire(KEYS[i], b)
    else
        ok = incr(KEYS[i], b)
    end
    if ok then
        decisions[i] = 1
    else
        decisions[i] = 0
        -- a shadow item (upper-case kind) over its limit is reported, never refuses the stage
        if kind == 'm' or kind == 'f' then
            refused[#refused + 1] = i
        end
    end
end

local binding = wanted
if #refused > 0 then
    binding = refused[1]
end
if binding == 0 then
    return {decisions, 0}
end
local reset, remaining, basis = state(binding)
for r = 2, #refused do
    local other_reset, other_remaining, other_basis = state(refused[r])
    if other_reset > reset then
        binding, reset, remaining, basis = refused[r], other_reset, other_remaining, other_basis
    end
end
return {decisions, binding, remaining, basis}
""".replace("HEAD_END", str(HEAD - 1)).replace("HEAD", str(HEAD))


_pack_double = struct.Struct("<d").pack


def _bulk_int(number: int) -> bytes:
    """An integer argument as ``hiredis.pack_command`` frames it (its decimal text)."""
    text = str(number).encode()
    return b"$%d\r\n%b\r\n" % (len(text), text)


_SMALL = tuple(_bulk_int(number) for number in range(64))  # the wanted item and the barrier
# Framed store keys remembered (StageScript.frame): the values of the last moments' clients,
# users and tenants; cleared when full, so a flood of fresh values costs memory up to this only.
KEY_CACHE_LIMIT = 8192


_LENGTHS = tuple(b"$%d\r\n" % size for size in range(256))  # a key's bulk-string length


class LateReply(RespError):
    """Redis reached the stage after its deadline and counted nothing."""


class StageScript:
    """Runs a whole stage as one ``EVALSHA`` on the coalescing RESP connection."""

    def __init__(self, client: RespClient) -> None:
        self.client = client
        self._source = STAGE_SCRIPT.encode()
        self._sha = hashlib.sha1(self._source, usedforsecurity=False).hexdigest()
        self._command_head = bulk_strings(("EVALSHA", self._sha))
        self._heads: dict[int, bytes] = {}  # item count → the command's framed head
        # (key head, key tail, value) → the framed key (bounded: KEY_CACHE_LIMIT)
        # Keys are the items' own (LimitItem.store_key_head: script_args.KEY_PREFIX, limits' keys).
        self._framed_keys: dict[tuple[bytes, bytes, str], bytes] = {}

    def frame(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        now: float,
        wanted: int,
        late_after: float,
        barrier: int,
    ) -> bytes:
        """``EVALSHA sha numkeys keys… now wanted late_after barrier item_args…`` in RESP
        framing, byte for byte what ``hiredis.pack_command`` makes of those arguments (a test
        holds them equal). Framing ~36 arguments one by one was ~7 % of a request's
        instructions; the items' fixed arguments come framed (``LimitItem.store_resp``)."""
        count = len(checks)
        head = self._heads.get(count)
        if head is None:  # EVALSHA, the sha, numkeys; one per item count (a handful per config)
            head = b"*%d\r\n%b%b" % (count * 7 + 7, self._command_head, _bulk_int(count))
            self._heads[count] = head
        parts = [head]
        args = []  # the items' fixed arguments, after the keys and the four stage arguments
        framed_keys = self._framed_keys
        for item, value in checks:
            # (head, tail, value) names the key exactly: two items of one rule share a head
            key = (item.store_key_head, item.store_key_tail, value)
            framed = framed_keys.get(key)
            if framed is None:  # framed here, not in a call: a flood of fresh values pays little
                raw = value.encode()
                size = item.store_key_size + len(raw)
                framed = b"".join(
                    (
                        _LENGTHS[size] if size < 256 else b"$%d\r\n" % size,
                        item.store_key_head,
                        raw,
                        item.store_key_tail,
                    )
                )
                if len(framed_keys) >= KEY_CACHE_LIMIT:
                    framed_keys.clear()  # SECURITY: memory exhaustion — values vary freely
                framed_keys[key] = framed
            parts.append(framed)
            args.append(item.store_resp)
        # the two doubles as their exact 8 bytes (see the module's docstring)
        parts += (
            b"$8\r\n",
            _pack_double(now),
            b"\r\n",
            _SMALL[wanted] if 0 <= wanted < len(_SMALL) else _bulk_int(wanted),
            b"$8\r\n",
            _pack_double(late_after),
            b"\r\n",
            _SMALL[barrier] if 0 <= barrier < len(_SMALL) else _bulk_int(barrier),
        )
        parts += args
        return b"".join(parts)

    @staticmethod
    def supports(checks: Sequence[tuple[LimitItem, str]]) -> bool:
        # A loop, not all(genexpr): no generator object per request on the hot path.
        for item, _ in checks:  # noqa: SIM110
            if not item.store_args:  # built for the script's strategies only (script_args)
                return False
        return True

    async def run(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        wanted: int | None,
        timeout: float = 1.0,
        barrier: int = 0,
    ) -> tuple[list[bool], int | None, WindowStats | None]:
        """Hit every item; the decisions, the binding item's index and its window state.
        ``wanted``: the item whose state an all-admitted stage reports (None: no state then).
        A refused stage always names its binding item and state. ``timeout``: after that many
        seconds the call fails (``StoreTimeout``) and Redis no longer counts the stage (its caller
        has given up). ``barrier``: the first that many items are a stage of their own, decided
        first; when one of them refuses, the rest are not hit and the decisions stop there (two
        stages in one call, counted as if one ran after the other). Raises ``RespError``.
        ``call``'s answer in ``limits``' terms (the limiter reads ``call``'s directly)."""
        decisions, binding, remaining, reset = await self.call(checks, wanted, timeout, barrier)
        if binding is None:
            return list(map(bool, decisions)), None, None
        return list(map(bool, decisions)), binding, WindowStats(reset, remaining)

    async def call(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        wanted: int | None,
        timeout: float = 1.0,
        barrier: int = 0,
    ) -> tuple[list[int], int | None, int, float]:
        """``run``, its reply as it comes: the decisions (1 admitted, 0 over), the binding item's
        index (None: none asked for and none refused), its remaining count and its reset time
        (``time.time()`` seconds; both 0 without a binding item). No ``WindowStats`` nor bool
        list is built per request: the limiter reads these where it needs them."""
        deadline = asyncio.get_running_loop().time() + timeout
        now = time.time()  # the hits' timestamp, read as limits reads it
        # Redis' clock: counts nothing after. Its own wall-clock read, so a test that moves the
        # hits' clock (the conformance test) never makes a stage look late.
        late_after = wall_clock() + timeout + self.client.clock_offset
        command = self.frame(checks, now, 0 if wanted is None else wanted + 1, late_after, barrier)
        try:
            reply = await self.client.submit(command, deadline)
        except ReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            # A NOSCRIPT reply means the script did not run: nothing was counted, so loading it
            # and running once more cannot count twice (Redis restarted or SCRIPT FLUSH).
            await self.client.call("SCRIPT", "LOAD", self._source, deadline=deadline)
            reply = await self.client.submit(command, deadline)
        if reply[0] == b"late":
            raise LateReply("the store ran the stage after its deadline; nothing was counted")
        binding = reply[1]
        if binding == 0:
            return reply[0], None, 0, 0.0
        item = checks[binding - 1][0]
        basis = reply[3]
        if item.strategy == "fixed-window":  # basis: the PTTL in ms
            reset = now + basis / 1000
        else:  # basis: the oldest entry inside the window (as Lua's tostring wrote it), or none
            reset = (now if basis is None else float(basis)) + item.window
        return reply[0], binding - 1, reply[2], reset
