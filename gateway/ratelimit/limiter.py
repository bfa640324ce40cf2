"""Where counts live and what happens when that place is gone (SPEC §8, issue 6 item 5).

One ``RateLimitBackend`` per process, shared by every runtime (a reload keeps connections and
counters): a ``memory://`` storage always, plus the shared Redis storage of the ``limits``
library when ``state.url`` is Redis (redis-py implementation, errors wrapped into
``StorageError``). Strategies come from ``limits.aio.strategies``; nothing is hand-rolled here.

A dead or hung Redis never holds a request: every stage's calls run under ``store_timeout``
(default 300 ms, well under the 1 s socket timeout; on the stage-script path the RESP
connection's deadline watch enforces it, elsewhere an ``asyncio.timeout``), the first failure opens a circuit
breaker, and while it is open requests go straight to the configured failure mode —
``local`` (the per-process memory storage takes over at once), ``allow`` or ``deny`` (503) —
with no store call at all. One background probe pings Redis every second and closes the
breaker when it answers; a warning is logged once per outage and a gauge shows the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import structlog
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import STRATEGIES, RateLimiter
from limits.errors import StorageError
from limits.util import WindowStats
from redis.asyncio import ConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.bounded_memo import remember
from gateway.errors import StoreUnavailable
from gateway.ratelimit.keys import ValueHasher, derive_hash_key
from gateway.ratelimit.metrics import (
    DECISION_TALLIES,
    SHADOW_REFUSALS,
    STORE_FAILURES,
    STORE_UP,
    TALLIED,
    DecisionTally,
    decision_tally,
)
from gateway.ratelimit.pipelined import PIPELINED, PipelinedHits, ScriptsMissing
from gateway.ratelimit.policies import CompiledLimits, LimitItem
from gateway.ratelimit.policies import strictest as _strictest
from gateway.ratelimit.resp import ReplyError, RespClient, RespError
from gateway.ratelimit.script_args import KEY_PREFIX
from gateway.ratelimit.stage_script import StageScript
from gateway.state.redis_url import RedisTarget, parse_redis_url

log = structlog.get_logger("gateway.ratelimit")
PROBE_INTERVAL = 1.0
STORE_ERRORS = (StorageError, RedisError, OSError, TimeoutError, StoreUnavailable, RespError)

EXACT_RESET = frozenset(("moving-window", "fixed-window"))
DENY_CACHE_LIMIT = 100_000
# Items whose admitted verdict is remembered (RateLimitBackend._fast_verdict): a config's items,
# a few per reload; cleared when full.
ADMITTED_LIMIT = 1024


class Verdict(NamedTuple):
    """The outcome of one stage: allowed or not, and the binding item's window state. A
    NamedTuple, immutable like the frozen dataclass it was, built without a ``__setattr__``
    call per field (two are built on every request)."""

    allowed: bool
    item: LimitItem
    remaining: int
    reset_in: float  # seconds until the binding item frees capacity
    source: str  # "shared" or "local"
    shadow: bool = False  # a shadow item was over its limit (reported, never refusing)


# ``_verdict(Verdict, (allowed, item, remaining, reset_in, source, shadow))``: the tuple's own
# constructor, every field given; the class call goes through the NamedTuple's Python
# ``__new__`` (a frame and the argument binding), ~40 % more for the same object.
_verdict = tuple.__new__


def _redis_pool(target: RedisTarget) -> tuple[ConnectionPool, list[Any]]:
    """Like the state store's pool (gateway.state.redis): no driver retries, short socket
    timeouts. Not the blocking pool: its condition variable and timeout cost ~90 µs per
    command, and every stage is bounded by ``store_timeout`` anyway. The cap is high so a
    burst opens connections rather than failing (an exhausted pool counts as a store failure)."""
    kwargs: dict[str, Any] = dict(target.options)
    kwargs.update(retry=Retry(NoBackoff(), 0), username=target.username, password=target.password)
    kwargs.setdefault("max_connections", 1024)
    if target.scheme == "redis+sentinel":
        assert target.service is not None
        sentinel_kwargs = {k: v for k, v in target.options.items() if k.startswith("socket_")}
        sentinel_kwargs.update(password=target.sentinel_password, retry=Retry(NoBackoff(), 0))
        sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)
        client = sentinel.master_for(
            target.service, connection_pool_class=SentinelConnectionPool, db=target.db, **kwargs
        )
        return client.connection_pool, list(sentinel.sentinels)
    (host, port), *_ = target.hosts
    if kwargs.pop("ssl", False):
        kwargs["connection_class"] = SSLConnection
    return ConnectionPool(host=host, port=port, db=target.db, **kwargs), []


S = TypeVar("S")  # what a verdict is applied to (decide_in_order's ``subject``)
R = TypeVar("R")


def _both(_: object, before: Verdict | None, after: Verdict | None) -> tuple[Verdict | None, Verdict | None]:
    return before, after


def _judge(checks: Sequence[tuple[LimitItem, str]], decisions: Sequence[int]) -> tuple[bool, bool]:
    """(the stage admits: no enforced item refused, a shadow item was over its limit). Called
    only when some item was over; each shadow policy over its limit is counted once."""
    allowed, shadow_policies = True, set()
    for (item, _), ok in zip(checks, decisions, strict=False):
        if not ok:
            if item.shadow:
                shadow_policies.add(item.policy)
            else:
                allowed = False
    for policy in shadow_policies:
        SHADOW_REFUSALS.labels(policy).inc()
    return allowed, bool(shadow_policies)


class CircuitBreaker:
    """Open after a failure; one background probe closes it when the store answers again."""

    def __init__(self, storage: Storage, timeout: float) -> None:
        self._storage = storage
        self._timeout = timeout
        self.open = False
        self._probe: asyncio.Task[None] | None = None

    def trip(self, error: BaseException) -> None:
        STORE_FAILURES.inc()
        if self.open:
            return
        self.open = True
        STORE_UP.set(0)
        # Warned once per outage; the error's class only (driver messages may name hosts).
        log.warning("ratelimit_store_unavailable", error=type(error).__name__, detail="failure mode in force")
        self._probe = asyncio.get_running_loop().create_task(self._wait_for_recovery())

    async def _wait_for_recovery(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            with contextlib.suppress(*STORE_ERRORS):
                async with asyncio.timeout(self._timeout):
                    if await self._storage.check():
                        break
        self.open = False
        STORE_UP.set(1)
        log.info("ratelimit_store_recovered")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe


class RateLimitBackend:
    """Storages, strategies and the breaker for one process; every runtime shares it."""

    def __init__(self, state_url: str, *, probe_timeout: float = 0.5) -> None:
        self.hash = ValueHasher(derive_hash_key())
        self.memory = MemoryStorage()
        # limits leaves STRATEGIES unannotated and mypy joins its three concrete classes into
        # the abstract base; typed as the classes they are, they type-check when instantiated.
        strategies: Mapping[str, type[RateLimiter]] = STRATEGIES
        self._local = {name: cls(self.memory) for name, cls in strategies.items()}
        self._pool: ConnectionPool | None = None
        self._sentinels: list[Any] = []  # sentinel clients, closed with the backend
        self.shared: RedisStorage | None = None
        self._remote: dict[str, RateLimiter] = {}
        self.breaker: CircuitBreaker | None = None
        self._pipelined: PipelinedHits | None = None
        self._stage_script: StageScript | None = None
        # (prefix, quota, window, value) → monotonic time until which that bucket is full.
        self._full_until: dict[tuple[str, int, int, str], float] = {}
        # id of an item → its verdict when admitted with no window state (_fast_verdict)
        self._admitted: dict[int, Verdict] = {}
        # stage → result → its decisions' tally (the process's, shared by every backend)
        self._tallies: defaultdict[str, dict[str, DecisionTally]] = DECISION_TALLIES
        STORE_UP.set(1)  # memory is always up; the breaker lowers it while Redis is away
        if not state_url.startswith("local:"):
            target = parse_redis_url(state_url)
            self._pool, self._sentinels = _redis_pool(target)
            self.shared = RedisStorage(
                "async+redis://",
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix=KEY_PREFIX,
                # limits types **options as float | str | bool, yet documents connection_pool.
                connection_pool=self._pool,  # type: ignore[arg-type]
            )
            self._remote = {name: cls(self.shared) for name, cls in strategies.items()}
            self.breaker = CircuitBreaker(self.shared, probe_timeout)
            self._pipelined = PipelinedHits(self.shared)
            if target.scheme != "redis+sentinel":  # sentinel discovery stays with redis-py
                self._stage_script = StageScript(RespClient(target))

    @property
    def store_down(self) -> bool:
        return self.breaker is not None and self.breaker.open

    async def check(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        settings: CompiledLimits,
        stage: str,
        *,
        state: bool = True,
    ) -> Verdict | None:
        """Hit every item concurrently; None when nothing was checked (mode ``allow``).
        Raises ``StoreUnavailable`` in mode ``deny`` while the shared store is down.
        ``state=False``: an admitted request needs no window state (no headers), so none is read."""
        known = self._known_full(checks)
        if known is not None:
            self._count(stage, "limited")
            return known
        if self.shared is None:
            return await self._run(self._local, checks, stage, "local", state)
        assert self.breaker is not None
        if not self.breaker.open:
            try:
                fast = self._stage_script
                if fast is not None and fast.supports(checks):
                    # The whole stage in one store call, its reply's future awaited here: no
                    # coroutine per level between the stage and the reply (each costs on creation
                    # and on every resumption). Bounded by the connection's deadline watch
                    # (RespProtocol): no timer per call.
                    static = _strictest(checks)
                    wanted = static if state and not checks[static][0].shadow else None  # shadow: no headers
                    pending, deadline, command = fast.start(checks, wanted, settings.store_timeout)
                    try:
                        reply = await pending
                    except ReplyError as error:
                        reply = await fast.retry(error, command, deadline)
                    return self._fast_stage(checks, stage, static, fast.read(reply))
                async with asyncio.timeout(settings.store_timeout):
                    return await self._run(self._remote, checks, stage, "shared", state)
            except STORE_ERRORS as error:
                self._store_failed(error)
        return await self.fail_over(checks, settings, stage, state)

    def _store_failed(self, error: BaseException) -> None:
        assert self.breaker is not None
        if isinstance(error, TimeoutError) and self._stage_script is not None:
            # A reply that did not come in time may never come: a fresh connection then.
            self._stage_script.client.abort()
        self.breaker.trip(error)

    def _known_full(self, checks: Sequence[tuple[LimitItem, str]]) -> Verdict | None:
        """A bucket refused earlier stays full until its reset time: for moving and fixed
        windows counts only fall as time passes, and no instance can free capacity sooner. So
        a flood is refused from memory, without a store round trip per request (exact)."""
        if not self._full_until:
            return None
        now = time.monotonic()
        for item, value in checks:
            until = self._full_until.get((item.prefix, item.quota, item.window, value))
            if until is not None and until > now:
                return _verdict(Verdict, (False, item, 0, until - now, "cache", False))
        return None

    def _remember_full(self, item: LimitItem, value: str, reset_in: float) -> None:
        if item.strategy not in EXACT_RESET or reset_in <= 0 or item.shadow:
            return
        if len(self._full_until) >= DENY_CACHE_LIMIT:
            now = time.monotonic()
            self._full_until = {k: v for k, v in self._full_until.items() if v > now}
            if len(self._full_until) >= DENY_CACHE_LIMIT:
                self._full_until.clear()
        self._full_until[(item.prefix, item.quota, item.window, value)] = time.monotonic() + reset_in

    async def fail_over(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        settings: CompiledLimits,
        stage: str,
        state: bool = True,
    ) -> Verdict | None:
        mode = settings.on_store_failure
        if mode == "deny":
            self._count(stage, "refused")
            raise StoreUnavailable("Rate limits cannot be checked right now; try again shortly")
        if mode == "allow":
            self._count(stage, "unchecked")
            return None
        self._count(stage, "fallback")
        return await self._run(self._local, checks, stage, "local", state)

    def _fast_stage(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        stage: str,
        static: int,
        answer: tuple[bytes, int | None, int, float],
    ) -> Verdict:
        """One stage's verdict from its stage-script answer (``StageScript.read``): the same
        verdicts as ``_run`` on the shared store."""
        decisions, binding, remaining, reset = answer
        if all(decisions):  # the common case, inline: every item admitted
            return self._fast_verdict(checks, stage, static, True, binding, remaining, reset)
        allowed, shadow = _judge(checks, decisions)
        return self._fast_verdict(checks, stage, static, allowed, binding, remaining, reset, shadow)

    def _fast_verdict(
        self,
        checks: Sequence[tuple[LimitItem, str]],
        stage: str,
        static: int,
        allowed: bool,
        binding: int | None,
        remaining: int,
        reset: float,
        shadow: bool = False,
    ) -> Verdict:
        """One stage's verdict from the stage script's reply (``StageScript.call``: ``binding``
        indexes ``checks``, ``reset`` is its window's reset time)."""
        self._count(stage, "ok" if allowed else "limited")
        if shadow:
            self._count(stage, "shadow_refused")
        if binding is None:  # admitted, and no window state asked for
            item = checks[static][0]
            if shadow:
                return _verdict(Verdict, (True, item, -1, 0.0, "shared", True))
            # The same verdict for every such answer of the item (pre_auth's, on every request):
            # built once. The entry holds the item, so its id names no other object meanwhile.
            admitted = self._admitted.get(id(item))
            if admitted is None:
                admitted = _verdict(Verdict, (True, item, -1, 0.0, "shared", False))
                remember(self._admitted, ADMITTED_LIMIT, id(item), admitted)
            return admitted
        item, value = checks[binding]
        reset_in = reset - time.time()
        if not allowed:
            self._remember_full(item, value, reset_in)
        return _verdict(Verdict, (allowed, item, remaining, reset_in, "shared", shadow))

    def refused_from_memory(self, checks: Sequence[tuple[LimitItem, str]], stage: str) -> Verdict | None:
        """The verdict of a bucket known to be full (counted as ``limited``), else None: a flood
        is refused before anything else is decided about the request."""
        if not self._full_until:  # nothing is known full (the common case): no call
            return None
        known = self._known_full(checks)
        if known is not None:
            self._count(stage, "limited")
        return known

    def script_takes(self, checks: Sequence[tuple[LimitItem, str]]) -> bool:
        """Whether the stage script can take these items now: it is in use, the store is up and
        they are script items. Sliding-window-counter items and redis-py (sentinel) stores keep
        a call per stage."""
        fast = self._stage_script
        return fast is not None and self.script_up() and fast.supports(checks)

    def script_up(self) -> bool:
        """``script_takes`` for items known to be script items (``CompiledLimits.deferrable``'s
        routes): the stage script is in use and the store is up."""
        fast, breaker = self._stage_script, self.breaker  # the breaker exists when the script does
        return fast is not None and breaker is not None and not breaker.open

    def can_defer(self, checks: Sequence[tuple[LimitItem, str]]) -> bool:
        """Whether a stage's hit may wait to ride along with a later stage's in one store call
        (``check_in_order``): the script takes its items and none is known full (a flood is
        refused from memory at once, as ever)."""
        return self.script_takes(checks) and self._known_full(checks) is None

    async def check_in_order(
        self,
        first: Sequence[tuple[LimitItem, str]],
        second: Sequence[tuple[LimitItem, str]],
        settings: CompiledLimits,
    ) -> tuple[Verdict | None, Verdict | None]:
        """The ``pre_auth`` stage (``first``, no window state) and then the route stage
        (``second``) in ONE store call when possible: the script decides the first stage's items
        first and, when one refuses, returns without touching the second's (``barrier``). So the
        counts, verdicts, deny cache, metrics and failure modes are exactly those of
        ``check(first)`` followed, when it admits, by ``check(second)`` — which is what runs
        whenever one call cannot do it. The second verdict is None when the first refused."""
        fast = self._stage_script
        if fast is None or not fast.supports(first) or not fast.supports(second):
            return await self._in_turn(first, second, settings)
        return await self.decide_in_order(first, second, settings, None, _both)

    async def decide_in_order(
        self,
        first: Sequence[tuple[LimitItem, str]],
        second: Sequence[tuple[LimitItem, str]],
        settings: CompiledLimits,
        subject: S,
        then: Callable[[S, Verdict | None, Verdict | None], R],
        strictest: int | None = None,
    ) -> R:
        """``check_in_order``, its two verdicts handed to ``then(subject, first's, second's)``
        and ``then``'s answer returned (``strictest``: the index of ``second``'s most restrictive
        item when the caller knows it, ``CompiledLimits.strictest``): a rate-limit stage applies
        them to its request here, so its one coroutine is this one, awaiting the store's reply
        future itself (no coroutine per level between the stage and the reply). Every item of
        both stages is a script item: ``check_in_order`` asks, and the stages defer only on
        routes compiled so (``CompiledLimits.deferrable``), so no request pays that question
        again."""
        fast = self._stage_script
        breaker = self.breaker
        # can_defer(first) and can_defer(second), spelt out: this runs on every request.
        if (
            fast is None
            or breaker is None
            or breaker.open
            or not first
            or not second
            # a known-full bucket of either stage is answered from memory
            or (self._full_until and (self._known_full(first) or self._known_full(second)))
        ):
            before, after = await self._in_turn(first, second, settings)
            return then(subject, before, after)
        split = len(first)
        static = _strictest(second) if strictest is None else strictest
        wanted = None if second[static][0].shadow else static  # shadow items never speak in headers
        try:
            pending, deadline, command = fast.start(
                first, None if wanted is None else split + wanted, settings.store_timeout, split, second
            )
            try:
                reply = await pending  # the reply's future itself, on an open connection
            except ReplyError as error:
                reply = await fast.retry(error, command, deadline)
            decisions, binding, remaining, reset = fast.read(reply)
        except STORE_ERRORS as error:
            self._store_failed(error)
            before, after = await self._in_turn(first, second, settings)  # the failure mode, stage by stage
            return then(subject, before, after)
        if len(decisions) == split:  # the barrier held: the first stage refused
            _, shadow_first = _judge(first, decisions)
            verdict = self._fast_verdict(first, "pre_auth", 0, False, binding, remaining, reset, shadow_first)
            return then(subject, verdict, None)
        static_first = _strictest(first) if len(first) > 1 else 0  # one pre_auth item, mostly
        if all(decisions):  # the common case, no slicing: every item of both stages admitted
            shadow_first, allowed, shadow = False, True, False
        else:
            shadow_first = _judge(first, decisions[:split])[1]
            allowed, shadow = _judge(second, decisions[split:])
        before = self._fast_verdict(first, "pre_auth", static_first, True, None, 0, 0.0, shadow_first)
        if binding is not None:
            binding -= split
        after = self._fast_verdict(second, "route", static, allowed, binding, remaining, reset, shadow)
        return then(subject, before, after)

    async def _in_turn(
        self,
        first: Sequence[tuple[LimitItem, str]],
        second: Sequence[tuple[LimitItem, str]],
        settings: CompiledLimits,
    ) -> tuple[Verdict | None, Verdict | None]:
        before = await self.check(first, settings, "pre_auth", state=False)
        if before is not None and not before.allowed:
            return before, None
        return before, await self.check(second, settings, "route")

    async def _run(
        self,
        strategies: dict[str, RateLimiter],
        checks: Sequence[tuple[LimitItem, str]],
        stage: str,
        source: str,
        state: bool,
    ) -> Verdict:
        # The most restrictive item: the smallest quota (App. B shows `q=50;w=1` for
        # "50/second;2000/minute"), the longer window on a tie. Static, so no extra reads.
        static = _strictest(checks)
        state = state and not checks[static][0].shadow  # shadow items never speak in headers
        results, stats = await self._hit(strategies, checks, static if state else None)
        shadow = False if all(results) else _judge(checks, results)[1]
        refused = [i for i, ok in enumerate(results) if not ok and not checks[i][0].shadow]
        binding = refused[0] if refused else None
        allowed = binding is None
        if len(refused) > 1:
            # Retry-After names the refusing item that frees last: "5/second;100/minute" with
            # both full must not send the client back after 1 s to be refused again.
            states = await asyncio.gather(*(self._state(strategies, *checks[i]) for i in refused))
            binding, stats = max(zip(refused, states, strict=True), key=lambda pair: pair[1].reset_time)
        counted = source == "shared" or self.shared is None  # fallback decisions were counted already
        if shadow:
            self._count(stage, "shadow_refused")
        if binding is None:
            binding = static
            if not state:
                if counted:
                    self._count(stage, "ok")
                return Verdict(True, checks[binding][0], -1, 0.0, source, shadow)
        elif binding != static and len(refused) == 1:
            stats = None  # the refusing item's state is the one to report
        item, value = checks[binding]
        if stats is None:  # window state is read for the binding item only
            stats = await self._state(strategies, item, value)
        if counted or not allowed:
            self._count(stage, "ok" if allowed else "limited")
        reset_in = stats.reset_time - time.time()
        if not allowed and counted:  # fallback counts are not the truth: never remembered
            self._remember_full(item, value, reset_in)
        return Verdict(allowed, item, stats.remaining, reset_in, source, shadow)

    async def _hit(
        self,
        strategies: dict[str, RateLimiter],
        checks: Sequence[tuple[LimitItem, str]],
        state_of: int | None,
    ) -> tuple[Sequence[bool], WindowStats | None]:
        pipelined = self._pipelined
        # One command alone is cheaper as it is; two or more share one round trip.
        worth_it = len(checks) > 1 or state_of is not None
        if strategies is self._remote and pipelined is not None and worth_it and pipelined.supports(checks):
            try:
                return await pipelined.run(checks, state_of)
            except ScriptsMissing:
                pass  # the public calls below load the scripts (first use, or Redis restarted)
        return await self._hit_all(strategies, checks), None

    async def _state(self, strategies: dict[str, RateLimiter], item: LimitItem, value: str) -> WindowStats:
        pipelined = self._pipelined
        if strategies is self._remote and pipelined is not None and item.strategy in PIPELINED:
            with contextlib.suppress(ScriptsMissing):
                return await pipelined.state(item, value)
        return await strategies[item.strategy].get_window_stats(item.item, item.prefix, value)

    @staticmethod
    async def _hit_all(
        strategies: dict[str, RateLimiter], checks: Sequence[tuple[LimitItem, str]]
    ) -> Sequence[bool]:
        if len(checks) == 1:
            item, value = checks[0]
            return (await strategies[item.strategy].hit(item.item, item.prefix, value, cost=item.cost),)
        # limits has no batch call: the hits of one stage go out together, never one by one.
        return await asyncio.gather(
            *(strategies[i.strategy].hit(i.item, i.prefix, v, cost=i.cost) for i, v in checks)
        )

    def _count(self, stage: str, result: str) -> None:
        tally = self._tallies[stage].get(result)
        if tally is None:  # labels() hashes and locks: once per (stage, result) and process
            tally = decision_tally(stage, result)
        tally.count += 1
        if not TALLIED:  # several workers: a scrape on any of them reads the shared files
            tally.publish()

    async def close(self) -> None:
        if self.breaker is not None:
            await self.breaker.close()
        if self._stage_script is not None:
            await self._stage_script.client.close()
        if self._pool is not None:
            await self._pool.disconnect()
        for client in self._sentinels:
            await client.aclose()
