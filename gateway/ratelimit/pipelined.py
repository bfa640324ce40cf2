"""One Redis round trip per stage: the ``limits`` library's own Lua scripts, queued in one
redis-py pipeline (ARCHITECTURE.md: "all checks of one request in one call").

``limits`` has no batch call, and each awaited redis-py command costs ~100-200 µs of CPU, so a
stage with two items plus the window-state read was three round trips. Here the same scripts
(by SHA, registered by ``limits``' redis-py bridge) and the same keys and arguments that its
``MovingWindowRateLimiter`` / ``FixedWindowRateLimiter`` use go out together; the window state
is read after the hits on the same connection, so it includes them. Nothing is re-implemented:
the counting is the library's Lua. Sliding-window-counter items, and any stage after Redis
lost its scripts (a restart: ``NoScriptError``), take the public API path instead, which
(re)loads the scripts. ``tests/unit/ratelimit/test_pipelined.py`` checks both paths agree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from limits.aio.storage import RedisStorage
from limits.util import WindowStats
from redis.exceptions import NoScriptError

from gateway.ratelimit.policies import LimitItem

PIPELINED = frozenset(("moving-window", "fixed-window"))


class ScriptsMissing(Exception):
    """Redis does not hold the scripts (yet, or since a restart): use the public API once."""


class PipelinedHits:
    def __init__(self, storage: RedisStorage) -> None:
        bridge: Any = storage.bridge
        self._bridge = bridge
        self._client = bridge.get_connection()
        self._acquire = bridge.lua_acquire_moving_window.sha
        self._window = bridge.lua_moving_window.sha
        self._incr = bridge.lua_incr_expire.sha
        self._scripts = (bridge.lua_acquire_moving_window, bridge.lua_moving_window, bridge.lua_incr_expire)
        self._loaded = False

    async def _load(self) -> None:
        # All three at once: a pipeline must never find some scripts and miss others, or the
        # hits that did run would be counted again by the public-API fallback.
        for script in self._scripts:
            await self._client.script_load(script.script)
        self._loaded = True

    @staticmethod
    def supports(checks: Sequence[tuple[LimitItem, str]]) -> bool:
        return all(item.strategy in PIPELINED for item, _ in checks)

    def _key(self, item: LimitItem, value: str) -> str:
        return str(self._bridge.prefixed_key(item.item.key_for(item.prefix, value)))

    async def run(
        self, checks: Sequence[tuple[LimitItem, str]], state_of: int | None
    ) -> tuple[list[bool], WindowStats | None]:
        """Hit every item and, when ``state_of`` is an index, read that item's window state
        afterwards, all in one round trip. Raises ``ScriptsMissing`` or a ``RedisError``."""
        if not self._loaded:
            await self._load()
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        keys = []
        for item, value in checks:
            key = self._key(item, value)
            keys.append(key)
            expiry = item.item.get_expiry()
            if item.strategy == "moving-window":
                pipe.evalsha(self._acquire, 1, key, now, item.quota, expiry, item.cost)
            else:
                pipe.evalsha(self._incr, 1, key, expiry, item.cost)
        if state_of is not None:
            self._queue_state(pipe, checks[state_of][0], keys[state_of], now)
        try:
            replies = await pipe.execute()
        except NoScriptError:  # Redis restarted: nothing of this pipeline was counted
            self._loaded = False
            raise ScriptsMissing from None
        allowed = [
            bool(reply) if item.strategy == "moving-window" else int(reply) <= item.quota
            for (item, _), reply in zip(checks, replies, strict=False)
        ]
        if state_of is None:
            return allowed, None
        return allowed, _stats(checks[state_of][0], replies[len(checks) :], now)

    def _queue_state(self, pipe: Any, item: LimitItem, key: str, now: float) -> None:
        if item.strategy == "moving-window":
            pipe.evalsha(self._window, 1, key, now - item.item.get_expiry(), item.quota)
        else:
            # PTTL, not the strategy's TTL: whole seconds would make a refused window look
            # over up to half a second early or late, and the deny cache trusts this time.
            pipe.get(key)
            pipe.pttl(key)

    async def state(self, item: LimitItem, value: str) -> WindowStats:
        """The window state of one item (moving or fixed window), in one round trip."""
        if not self._loaded:
            await self._load()
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        self._queue_state(pipe, item, self._key(item, value), now)
        try:
            return _stats(item, await pipe.execute(), now)
        except NoScriptError:
            self._loaded = False
            raise ScriptsMissing from None


def _stats(item: LimitItem, replies: list[Any], now: float) -> WindowStats:
    """The same arithmetic as the strategies' ``get_window_stats``."""
    if item.strategy == "moving-window":
        window = replies[0]
        start, count = (float(window[0]), int(window[1])) if window else (now, 0)
        return WindowStats(start + item.item.get_expiry(), item.quota - count)
    current, pttl = replies
    return WindowStats(now + max(int(pttl), 0) / 1000, max(0, item.quota - int(current or 0)))
