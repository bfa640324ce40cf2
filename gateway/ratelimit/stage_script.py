"""Every item of a stage in ONE Redis call: one Lua script hits them all and returns the
decisions plus the binding item's window state (issue 13, "one store round trip per request").

The script is the ``limits`` library's own arithmetic, item by item, on the library's own keys
and data layout, so this path and ``limits``' public API (the fallback, the probe, operators'
tools) count in the same buckets:
- moving window: ``acquire_moving_window.lua`` (LINDEX at ``limit - cost``, LPUSH the
  timestamp ``cost`` times, LTRIM when the list outgrew the limit, EXPIRE); the window state is
  ``moving_window.lua``'s binary search, probe for probe, its first probes answered from one
  LRANGE of the list's head, so no call reads the whole list. For the item whose state an
  admitted stage reports, that LRANGE comes just before its hit: it answers the hit's LINDEX
  too when that falls inside it (or past the list's end), and the state after the hit is the
  pushed entries followed by it (one call less, the same probes on the same entries);
- fixed window: ``incr_expire.lua`` (INCRBY, EXPIRE on the first hit); the state is GET and
  PTTL (PTTL, not the strategy's whole-second TTL: the deny cache trusts this reset time).
The binding item is chosen as ``RateLimitBackend._run`` chooses it: the refusing item, the
refusing item that frees last when several refuse, else the statically strictest one.

Timestamps are the client's ``time.time()``, the very double ``limits`` sends (it sends the
``repr``; this path sends the double's 8 bytes, ``struct.pack('<d')``, which Redis' Lua reads
back with its ``struct.unpack('<d')`` bit for bit, at a fraction of ``repr``'s or even
``float.hex()``'s cost), compared as numbers and pushed as a Lua number, as the library's Lua
pushes them, so the lists hold the same bytes whichever path wrote them (Redis formats that
number, %.17g or shortest form by version).

Redis' CPU goes mostly per ``redis.call`` (command lookup, key lookups, argument objects, the
reply turned into Lua values: ~7,000 instructions even for TIME, ~1,400 more per list entry
an LRANGE returns), per script argument (a string object and a Lua string each), to strtod for
``tonumber`` on text and to sprintf for any Lua number handed to a command: so the script makes
few calls, takes one packed argument per item (its numbers as numbers, the text its commands
take as text: ``script_args.pack_item``) and one for the stage's own numbers.
``tests/unit/ratelimit/test_stage_conformance.py`` and ``test_stage_script_head.py`` prove the
decisions and window numbers equal the library's. Sliding-window-counter items stay on the
public API path.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Awaitable, Sequence
from time import time as wall_clock
from typing import Any

from limits.util import WindowStats

from gateway.bounded_memo import remember
from gateway.ratelimit.policies import LimitItem
from gateway.ratelimit.resp import ReplyError, RespClient, RespError
from gateway.ratelimit.script_args import bulk_strings

HEAD = 16  # list entries one LRANGE reads for the window state's first probes

STAGE_SCRIPT = """
-- ARGV[1]: the stage's numbers, struct '<ddI4I4': the client's time (the hits' timestamp, the
-- very double, its 8 bytes), the deadline (Redis' clock), the wanted item (0: none) and the
-- barrier (items 1..barrier are a stage of their own, decided first; 0: none).
-- ARGV[1 + i]: item i's arguments (script_args.item_args, packed by script_args.pack_item):
-- its kind (m/f; M/F: a shadow item, counted alike but never refusing), limit, expiry and
-- amount as numbers, then as text the expiry, the amount, limit - amount (the LINDEX limits'
-- acquire reads) and limit - 1 (the LTRIM end). Redis turns every argument into a Lua string
-- (a cost per argument), tonumber on text is a strtod and a Lua number handed to redis.call is
-- formatted with sprintf: so one argument per item, its numbers as numbers and the text
-- redis.call takes as text (the timestamp stays a number: the same bytes as limits').
local ITEM = '<c1dddBc0Bc0Bc0Bc0'
local unpack_struct, pack_struct = struct.unpack, struct.pack
local REPLY = '<I4i4d'  -- the reply's head: binding item, remaining, reset time (_REPLY)
local now, late_after, wanted, barrier = unpack_struct('<ddI4I4', ARGV[1])
local call = redis.call

-- A stage whose caller has given up (store_timeout: a hung or slow Redis, the commands queued
-- behind it) is not counted: the gateway already answered it by its failure mode.
local clock = call('time')
if tonumber(clock[1]) + tonumber(clock[2]) / 1000000 > late_after then
    return 'late'
end

-- The wanted item's first HEAD list entries, read (moving window) just before its hit: its
-- window state after the hit is the entries pushed (`pushed` copies of now) and then these,
-- so no second read. The same read answers the hit's LINDEX when that falls inside it or past
-- the list's end (`whole`: the list is shorter than HEAD).
local head, whole, pushed = nil, false, 0

-- limits' acquire_moving_window.lua; LTRIM only when the list outgrew the limit (it would be a
-- no-op otherwise, and that is most hits)
local function acquire(i, key, limit, expiry, amount, s_expiry, s_index, s_trim)
    if amount > limit then
        return false
    end
    local entry
    if i == wanted then
        head = call('lrange', key, '0', limit - 1 < HEAD and s_trim or 'HEAD_END')
        whole = #head < HEAD
        if limit - amount < #head then
            entry = head[limit - amount + 1]
        elseif not whole then
            entry = call('lindex', key, s_index)
        end
    else
        entry = call('lindex', key, s_index)
    end
    if entry and tonumber(entry) >= now - expiry then
        return false
    end
    local length
    if amount == 1 then
        length = call('lpush', key, now)  -- a number, as limits pushes it: the same bytes
    else
        local entries = {}
        for n = 1, amount do
            entries[n] = now
        end
        for n = 1, amount, 5000 do
            length = call('lpush', key, unpack(entries, n, math.min(n + 4999, amount)))
        end
    end
    if i == wanted then
        pushed = amount
    end
    if length > limit then
        call('ltrim', key, '0', s_trim)
    end
    call('expire', key, s_expiry)
    return true
end

-- The window state: the reset time and the remaining count. The reset time is the very double
-- limits' client would compute from its reply: the oldest entry inside the window (as
-- moving_window.lua's tostring wrote it) plus the expiry, or the hits' time plus the PTTL in
-- seconds (both IEEE additions and a division, the same in Lua as in Python).
local function state(i)
    local key = KEYS[i]
    local kind, limit, expiry, _, _, _, _, s_trim = unpack_struct(ITEM, ARGV[i + 1])
    if kind == 'f' or kind == 'F' then
        local current = tonumber(call('get', key)) or 0
        local pttl = call('pttl', key)
        if pttl < 0 then
            pttl = 0
        end
        return now + pttl / 1000, math.max(0, limit - current)
    end
    -- limits' moving_window.lua binary search, probe for probe (so an unsorted list, written
    -- by instances with skewed clocks, gives its answer too); the first HEAD entries come
    -- from one LRANGE instead of one LINDEX per probe
    local target = now - expiry
    local high = limit - 1
    local first, ended, shift = head, whole, pushed  -- the wanted item's, read before its hit
    if i ~= wanted or not first then
        first = call('lrange', key, '0', high < HEAD and s_trim or 'HEAD_END')
        -- fewer than HEAD entries: that is the whole list, and LINDEX past its end is nil (the
        -- script runs atomically, nothing changes the list meanwhile), so no probe needs a call
        ended, shift = #first < HEAD, 0
    end
    local low, index, oldest = 0, nil, nil
    while low <= high do
        local mid = math.floor((low + high) / 2)
        local value
        if mid < shift then
            value = now  -- pushed by this hit: the number Redis wrote reads back as this one
        else
            local raw
            if mid - shift < HEAD then
                raw = first[mid - shift + 1]
            elseif not ended then
                raw = call('lindex', key, string.format('%d', mid))
            end
            value = raw and tonumber(raw)
        end
        if value and value >= target then
            index, oldest = mid, value
            low = mid + 1
        else
            high = mid - 1
        end
    end
    if index then
        -- tostring, as moving_window.lua returns it: limits reports the start at %.14g
        oldest = tostring(oldest)
        return tonumber(oldest) + expiry, limit - (index + 1)
    end
    return now + expiry, limit
end

local decisions = {}
local refused = {}
for i = 1, #KEYS do
    if i == barrier + 1 and #refused > 0 then
        -- The first stage refused: the later one is not reached, as if it ran after it (its
        -- items untouched, not counted); the reply's decisions stop at the barrier.
        break
    end
    local key = KEYS[i]
    if head and key == KEYS[wanted] then
        head = nil  -- the wanted item's key hit again (a policy listed twice): read it afresh
    end
    local kind, limit, expiry, amount, s_expiry, s_amount, s_index, s_trim = unpack_struct(ITEM, ARGV[i + 1])
    local ok
    if kind == 'm' or kind == 'M' then
        ok = acquire(i, key, limit, expiry, amount, s_expiry, s_index, s_trim)
    else
        -- limits' incr_expire.lua
        local current = call('incrby', key, s_amount)
        if current == amount then
            call('expire', key, s_expiry)
        end
        ok = current <= limit
    end
    if ok then
        decisions[i] = '\1'
    else
        decisions[i] = '\0'
        -- a shadow item (upper-case kind) over its limit is reported, never refuses the stage
        if kind == 'm' or kind == 'f' then
            refused[#refused + 1] = i
        end
    end
end

-- The reply is one bulk string: the binding item, its remaining count and its reset time (the
-- double itself) packed, then the decisions, a byte each. The client unpacks it without a
-- list, an integer or a float parse per field (and Redis builds one reply object, not a tree).
local binding = wanted
if #refused > 0 then
    binding = refused[1]
end
if binding == 0 then
    return pack_struct(REPLY, 0, 0, 0) .. table.concat(decisions)
end
local reset, remaining = state(binding)
for r = 2, #refused do
    local other_reset, other_remaining = state(refused[r])
    if other_reset > reset then
        binding, reset, remaining = refused[r], other_reset, other_remaining
    end
end
return pack_struct(REPLY, binding, remaining, reset) .. table.concat(decisions)
""".replace("HEAD_END", str(HEAD - 1)).replace("HEAD", str(HEAD))


def _bulk_int(number: int) -> bytes:
    """An integer argument as ``hiredis.pack_command`` frames it (its decimal text)."""
    text = str(number).encode()
    return b"$%d\r\n%b\r\n" % (len(text), text)


# The stage's numbers (the script's ARGV[1]) with their framing: the hits' timestamp and the
# deadline as their exact 8 bytes each (see the module's docstring), the wanted item, the barrier.
_STAMP = struct.Struct("<5sddII2s")
_pack_stamp = _STAMP.pack
_STAMP_HEAD = b"$%d\r\n" % (_STAMP.size - 7)
# The reply's head (the script's REPLY): binding item, remaining, reset time; the decisions follow.
_REPLY = struct.Struct("<Iid")
_unpack_reply = _REPLY.unpack_from
_REPLY_SIZE = _REPLY.size
# Framed store keys remembered per item (LimitItem.store_keys): the values of the last moments'
# clients, users and tenants; cleared when full, so a flood of fresh values costs memory up to
# this only.
KEY_CACHE_LIMIT = 4096
# Framed checks tuples remembered (StageScript.frame): the remembered addresses' and identities'
# (policies.ADDRESS_MEMO_LIMIT + IDENTITY_MEMO_LIMIT); cleared when full.
FRAMED_LIMIT = 8192
# (the checks, their keys framed, their items' arguments framed)
_Framed = tuple[Sequence[tuple[LimitItem, str]], bytes, bytes]


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
        self._framed: dict[int, _Framed] = {}  # id of a remembered checks tuple → it, framed

    def frame(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        now: float,
        wanted: int,
        late_after: float,
        barrier: int,
        more: Sequence[tuple[LimitItem, str]] = (),
    ) -> bytes:
        """``EVALSHA sha numkeys keys… stamp items…`` in RESP framing, byte for byte what
        ``hiredis.pack_command`` makes of those arguments (a test holds them equal), for the
        items of ``checks`` followed by those of ``more`` (a second stage's, ``barrier`` items
        after the first's): the stamp packs ``now``, ``late_after``, ``wanted`` and ``barrier``
        (``struct '<ddII'``), each item is one packed argument (``LimitItem.store_resp``, framed
        once per compiled item) and each key is framed once per item and value
        (``LimitItem.store_keys``)."""
        count = len(checks) + len(more)
        head = self._heads.get(count)
        if head is None:  # EVALSHA, the sha, numkeys; one per item count (a handful per config)
            head = b"*%d\r\n%b%b" % (count * 2 + 4, self._command_head, _bulk_int(count))
            self._heads[count] = head
        stamp = _pack_stamp(_STAMP_HEAD, now, late_after, wanted, barrier, b"\r\n")
        # A remembered checks tuple (policies.address_checks, identity_checks: the same object
        # for every request of its address or identity) is framed once; the entry holds the
        # tuple, so its id names no other object while it is remembered.
        known = self._framed.get(id(checks))
        if known is None:
            known = self._frame_checks(checks)
        if not more:
            return b"".join((head, known[1], stamp, known[2]))
        then = self._framed.get(id(more))
        if then is None:
            then = self._frame_checks(more)
        return b"".join((head, known[1], then[1], stamp, known[2], then[2]))

    def _frame_checks(self, checks: Sequence[tuple[LimitItem, str]]) -> _Framed:
        """The keys and the items' arguments of ``checks``, framed (``frame``); remembered when
        ``checks`` is a tuple, which the memos that hand out checks never change."""
        keys = []
        args = []
        for item, value in checks:
            # Keys are the items' own (LimitItem.store_key_head: script_args.KEY_PREFIX, limits'
            # keys), remembered per item: two items of one rule share a head, not a key.
            framed = item.store_keys.get(value)
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
                remember(item.store_keys, KEY_CACHE_LIMIT, value, framed)  # values vary freely
            keys.append(framed)
            args.append(item.store_resp)
        known = (checks, b"".join(keys), b"".join(args))
        if type(checks) is tuple:  # a list is the caller's, built for this request alone
            remember(self._framed, FRAMED_LIMIT, id(checks), known)
        return known

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

    def start(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        wanted: int | None,
        timeout: float,
        barrier: int = 0,
        more: Sequence[tuple[LimitItem, str]] = (),
    ) -> tuple[Awaitable[Any], float, bytes]:
        """``call``'s first half, no coroutine: the command sent (coalesced with this loop
        iteration's others). The reply's awaitable, the deadline (loop time) and the command;
        the caller awaits the first (``retry`` on a ``ReplyError``) and hands the reply to
        ``read``. So a stage's one coroutine awaits the reply's future itself. ``more``: a second
        stage's items, after ``checks`` (``barrier`` is then ``len(checks)``)."""
        client = self.client
        deadline = client.deadline_after(timeout)
        now = time.time()  # the hits' timestamp, read as limits reads it
        # Redis' clock: counts nothing after. Its own wall-clock read, so a test that moves the
        # hits' clock (the conformance test) never makes a stage look late.
        late_after = wall_clock() + timeout + client.clock_offset
        command = self.frame(checks, now, 0 if wanted is None else wanted + 1, late_after, barrier, more)
        return client.submit(command, deadline), deadline, command

    async def retry(self, error: ReplyError, command: bytes, deadline: float) -> Any:
        """After an error reply: ``NOSCRIPT`` means the script did not run, so nothing was
        counted, and loading it and running once more cannot count twice (Redis restarted or
        SCRIPT FLUSH); any other error is raised again."""
        if not str(error).startswith("NOSCRIPT"):
            raise error
        await self.client.call("SCRIPT", "LOAD", self._source, deadline=deadline)
        return await self.client.submit(command, deadline)

    @staticmethod
    def read(reply: Any) -> tuple[bytes, int | None, int, float]:
        """``call``'s answer from the script's reply: one bulk string, the binding item (1-based,
        0: none), its remaining count and reset time packed (``_REPLY``), then the decisions, a
        byte each (1 admitted, 0 over)."""
        if reply == b"late":
            raise LateReply("the store ran the stage after its deadline; nothing was counted")
        binding, remaining, reset = _unpack_reply(reply)
        if binding == 0:
            return reply[_REPLY_SIZE:], None, 0, 0.0
        return reply[_REPLY_SIZE:], binding - 1, remaining, reset

    async def call(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        wanted: int | None,
        timeout: float = 1.0,
        barrier: int = 0,
    ) -> tuple[bytes, int | None, int, float]:
        """``run``, its reply as it comes: the decisions (a byte each: 1 admitted, 0 over), the binding item's
        index (None: none asked for and none refused), its remaining count and its reset time
        (``time.time()`` seconds; both 0 without a binding item). No ``WindowStats`` nor bool
        list is built per request: the limiter reads these where it needs them."""
        pending, deadline, command = self.start(checks, wanted, timeout, barrier)
        try:
            reply = await pending
        except ReplyError as error:
            reply = await self.retry(error, command, deadline)
        return self.read(reply)
