"""Login failure counting and lockouts (SPEC §8), kept in the state store so they hold across
instances and survive restarts.

Store layout (StateStore keys): ``rl:fail:ip:<ip>`` / ``rl:fail:user:<hash>`` failure counters
(a fixed window of ``login.window``); ``rl:lock:<kind>:<subject>`` the lockout record, expiring
with the lockout; ``rl:level:<kind>:<subject>`` how many lockouts this subject has had lately
(each doubles the next, up to ``max_lockout``; forgotten 2 x max_lockout after the first).
Usernames appear only as keyed hashes of their canonical form — never in clear, in the store,
the audit trail or the logs.

A lockout starts with the failure that reaches the threshold (App. B). The failure counter is
not reset by a lockout, so each failure after one expires (within the window) locks again,
for twice as long. A successful login resets that username's counter (the account's owner
got in) but never an IP's: one valid account must not launder a stuffing source.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import structlog

from gateway.audit import SYSTEM_TRAIL, AuditTrail
from gateway.errors import StoreUnavailable
from gateway.ratelimit.keys import canonical_username, ip_subject
from gateway.ratelimit.limiter import STORE_ERRORS, RateLimitBackend
from gateway.ratelimit.lockout_memory import LOCK_PREFIX, LockoutMemory
from gateway.ratelimit.metrics import LOCKOUTS
from gateway.ratelimit.model import LoginProtectionConfig, StoreFailureMode
from gateway.redaction.processor import truncate_ip
from gateway.state import StateStore
from gateway.state.generation import StoreGeneration

log = structlog.get_logger("gateway.ratelimit")
T = TypeVar("T")
_FAILURE_STATUSES = frozenset((401, 403))  # the upstream refused the credentials
_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


@dataclass(frozen=True, slots=True)
class Subject:
    kind: str  # "ip" or "user"
    id: str  # the IP, or the username's keyed hash

    def key(self, part: str) -> str:
        return f"rl:{part}:{self.kind}:{self.id}"


class LockoutService:
    def __init__(
        self,
        store: StateStore,
        audit: AuditTrail,
        backend: RateLimitBackend,
        config: LoginProtectionConfig,
        *,
        mode: StoreFailureMode,
        timeout: float,
        memory: LockoutMemory | None = None,
        generation: StoreGeneration | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._backend = backend
        self.config = config
        self._mode = mode
        self._timeout = timeout
        self._background: set[asyncio.Task[None]] = set()
        # Lockouts this process has seen or set, bounded and shared by every runtime: enforced
        # from memory while the store is unreachable or was reset (App. C), so neither unlocks a
        # stuffing source.
        self._memory = memory if memory is not None else LockoutMemory(store)
        self._generation = generation

    def subjects(self, ip: str, username: str | None) -> list[Subject]:
        found = [Subject("ip", ip_subject(ip))]
        if username is not None:
            found.append(Subject("user", self.username_hash(username)))
        return found

    def attempt_subjects(self, ip: str, fields: Mapping[str, Any] | None) -> list[Subject]:
        """What a login attempt counts: its IP, and the ``username_field`` of its body when that
        is a string (a number or a list names no username; the IP still counts)."""
        username = fields.get(self.config.username_field) if fields is not None else None
        return self.subjects(ip, username if isinstance(username, str) else None)

    def username_hash(self, username: str) -> str:
        return self._backend.hash(canonical_username(username))

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """A store call bounded like the rate limits: breaker open or failure → None, or 503
        in mode ``deny``."""
        if not self._backend.store_down:
            try:
                async with asyncio.timeout(self._timeout):
                    return await call()
            except STORE_ERRORS as error:
                if self._backend.breaker is not None:
                    self._backend.breaker.trip(error)
                else:
                    log.warning("lockout_store_error", error=type(error).__name__)
        if self._mode == "deny":
            raise StoreUnavailable("Login protection cannot be checked right now; try again shortly")
        return None

    async def locked_for(self, subjects: list[Subject]) -> float | None:
        """Seconds left of the longest lockout among ``subjects``, or None."""

        async def read() -> list[bytes | None]:
            return list(await asyncio.gather(*(self._store.get(s.key("lock")) for s in subjects)))

        records = await self._guarded(read)
        now = time.time()
        memory = self._memory
        if records is None:  # store down (modes local/allow): what this process knows
            left = [memory.until(s.key("lock")) - now for s in subjects]
        else:
            left = []
            forgotten: list[str] = []  # locked here, absent from the store: cleared, or a reset
            for subject, raw in zip(subjects, records, strict=True):
                key = subject.key("lock")
                if raw is None:
                    if memory.until(key) > now:
                        forgotten.append(key)
                    else:
                        memory.forget(key)
                    continue
                until = orjson.loads(raw)["until"]
                memory.remember(key, until, raw)
                left.append(until - now)
            # Rare (a lockout ended early), so the one extra store read is not on the hot path.
            if forgotten and await self._store_was_reset():
                left += [memory.until(key) - now for key in forgotten]
            else:
                for key in forgotten:
                    memory.forget(key)  # cleared by an operator (on any instance)
        longest = max(left, default=0.0)
        return longest if longest > 0 else None

    async def _store_was_reset(self) -> bool:
        """SECURITY (App. C): a lockout the store no longer has was cleared, unless the store
        itself forgot it (restarted empty, flushed); only the generation marker tells them
        apart. Unanswered, assume the reset: a stuffing source stays locked."""
        if self._generation is None:
            return False
        try:
            async with asyncio.timeout(self._timeout):
                return await self._generation.check()
        except (StoreUnavailable, TimeoutError):
            return True

    async def record_outcome(
        self, subjects: list[Subject], status: int, method: str, request_id: str
    ) -> None:
        """The upstream's answer (``status``) to a login route's request: 401/403 count as a
        failed attempt; a success (2xx/3xx) of an attempt resets the username's count."""
        if status in _FAILURE_STATUSES:
            await self.record_failure(subjects, request_id)
        elif 200 <= status < 400 and method not in _SAFE_METHODS:
            # SECURITY: only a login attempt can succeed. A GET of the login page (a 200 with a
            # body naming the victim) must not wipe the victim's failure count.
            await self.record_success(subjects)

    async def record_failure(self, subjects: list[Subject], request_id: str) -> None:
        window = self.config.window

        async def count() -> list[int]:
            return list(
                await asyncio.gather(*(self._store.incr(s.key("fail"), ttl=window) for s in subjects))
            )

        counts = await self._guarded(count)
        if counts is None:
            return
        for subject, failures in zip(subjects, counts, strict=True):
            limit = self.config.failures_per_ip if subject.kind == "ip" else self.config.failures_per_username
            if failures >= limit:
                await self._guarded(functools.partial(self._lock, subject, failures, request_id))

    async def record_success(self, subjects: list[Subject]) -> None:
        users = [s.key("fail") for s in subjects if s.kind == "user"]  # never the IP (module doc)
        if users:
            await self._guarded(lambda: self._store.delete(*users))

    async def _lock(self, subject: Subject, failures: int, request_id: str) -> None:
        cfg = self.config
        level = await self._store.incr(subject.key("level"), ttl=2 * cfg.max_lockout)
        duration = min(cfg.base_lockout * 2 ** min(level - 1, 40), cfg.max_lockout)
        now = time.time()
        record = {
            "kind": subject.kind,
            "subject": subject.id,
            "level": level,
            "since": now,
            "until": now + duration,
        }
        raw = orjson.dumps(record)
        await self._store.set(subject.key("lock"), raw, ttl=duration)
        self._memory.remember(subject.key("lock"), now + duration, raw)
        await self._memory.announce(subject.key("lock"), raw)  # every instance holds it (App. C)
        if self._generation is not None:
            await self._generation.bump()  # a store that comes back without it has gone back
        self._spawn(self._announce(subject, level, duration, failures, request_id))

    async def _announce(
        self, subject: Subject, level: int, duration: float, failures: int, request_id: str
    ) -> None:
        shown = truncate_ip(subject.id.partition("/")[0]) if subject.kind == "ip" else subject.id
        log.warning("ratelimit_lockout", kind=subject.kind, subject=shown, level=level, seconds=duration)
        LOCKOUTS.labels(subject.kind).inc()
        details = {"kind": subject.kind, "subject": subject.id, "level": level, "seconds": duration}
        details["failures"] = failures
        try:
            self._audit.submit(
                "ratelimit.lockout",
                tenants=[SYSTEM_TRAIL],
                actor="gateway",
                request_id=request_id,
                details=details,
            )
        except OSError:
            log.error("ratelimit_lockout_unaudited", kind=subject.kind)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- operator side (admin API) ---------------------------------------------------------
    async def list(self) -> list[dict[str, Any]]:
        """Every active lockout; raises ``StoreUnavailable``."""
        return (await self.list_bounded(None))[0]

    # builtins: the method ``list`` above shadows the type in the rest of the class.
    async def list_bounded(self, limit: int | None) -> tuple[builtins.list[dict[str, Any]], bool]:
        """At most ``limit`` active lockouts (the first by store key) and whether more exist.

        One GET per listed key: during a credential-stuffing wave there may be thousands, and
        the console polls this every few seconds, so the admin API caps it."""
        keys = sorted(await self._store.keys(LOCK_PREFIX))
        truncated = limit is not None and len(keys) > limit
        if limit is not None:
            keys = keys[:limit]
        values = await asyncio.gather(*(self._store.get(k) for k in keys))
        now = time.time()
        found = [orjson.loads(v) for v in values if v is not None]
        active = [r for r in found if r["until"] > now]
        for record in active:
            record["retry_after"] = max(1, int(record["until"] - now + 0.999))
        return sorted(active, key=lambda r: (r["kind"], r["subject"])), truncated

    async def clear(self, subject: Subject) -> bool:
        """Forget the lockout, its failures and its level; True when a lockout was active."""
        deleted = await self._store.delete(subject.key("lock"))
        self._memory.forget(subject.key("lock"))
        await self._memory.announce(subject.key("lock"), None)
        await self._store.delete(subject.key("fail"), subject.key("level"))
        return deleted > 0
