"""``SyncedSnapshot``: an in-memory copy of some stored state, kept fresh by pub/sub plus a
periodic resync, so the hot path reads a local attribute instead of making a store round trip
(ARCHITECTURE property 4). Kill switches, revocation epochs and signing keys use it.

Protocol: a writer changes the store, then publishes anything on the channel. The snapshot
reloads on every message (bursts coalesce into one reload), every ``resync`` seconds (covers
lost messages and hung stores), and after every (re)subscribe (covers messages published
while the subscription was down). When the store is down it keeps the last value and reports
``healthy = False``; it retries every ``retry`` seconds.

Watchers (``watch``) are called after every new value, loaded or ``replace``d locally: what was
allowed under the old value (an open stream of a now revoked session) can be re-judged at once.

Local writes: ``replace(value)`` sets a value derived here; a load that overlapped it may
predate the write, so that load is discarded (the write's own publish brings another). Under a
steady stream of local writes every load would overlap one and the snapshot would never learn
what other instances wrote (a grant revoked elsewhere). ``update(patch)`` avoids that: the
patch (an idempotent merge of the write into a value) is applied now and again on top of every
load that overlapped it, so such a load is applied, never discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore, Subscription
from gateway.state.generation import StoreReset

T = TypeVar("T")
log = logging.getLogger(__name__)


async def cancel_until_done(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` until it has really ended. Python 3.11's ``asyncio.wait_for`` (used by
    redis-py while connecting) can swallow a cancellation and leave a background loop
    running; its outcome (a cancellation or a crash) is dropped: the task is being stopped."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


class SyncedSnapshot(Generic[T]):
    """The latest value of ``load()``; read ``.value`` freely, it never touches the store."""

    def __init__(
        self,
        store: StateStore,
        channel: str,
        load: Callable[[], Awaitable[T]],
        *,
        resync: float = 30.0,
        retry: float = 1.0,
        initial: T | None = None,
    ) -> None:
        if resync <= 0 or retry <= 0:
            raise ValueError("resync and retry must be positive")
        self.value: T | None = initial
        self.loaded_at: float | None = None  # time.time() of the last successful load
        self.healthy = False  # last load succeeded and the subscription is live
        self._store, self._channel, self._load = store, channel, load
        self._resync, self._retry = resync, retry
        self._loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watchers: list[Callable[[], object]] = []  # what they return is ignored
        self._replaced = 0  # local writes so far (see reload)
        self._loading = 0  # loads in flight
        self._patches: list[tuple[int, Callable[[T], T]]] = []  # (write number, patch) since then

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def watch(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` (synchronously, in the loop) after every new value."""
        if callback not in self._watchers:
            self._watchers.append(callback)

    def replace(self, value: T) -> None:
        """Set a value derived locally (a write of this instance, before its pub/sub round trip)."""
        self.value = value
        self._replaced += 1
        self._notify()

    def update(self, patch: Callable[[T], T]) -> None:
        """Apply a local write as ``patch`` (an idempotent merge: applying it to a value that
        already holds the write changes nothing). Unlike ``replace``, a load that overlapped it
        is applied with the patch on top instead of being discarded. Needs a value held."""
        if self.value is None:
            raise RuntimeError("update needs a value: the first load reads the write")
        value = patch(self.value)
        if self._loading:
            self._patches.append((self._replaced + 1, patch))
        self.replace(value)

    def _notify(self) -> None:
        for callback in self._watchers:
            try:
                callback()
            except Exception:
                # A watcher's bug must not stop the snapshot from refreshing (and enforcing).
                log.exception("snapshot %s: watcher failed", self._channel)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"snapshot:{self._channel}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_until_done(task)
        self.healthy = False

    async def wait_loaded(self, timeout: float | None = None) -> None:
        """Return once a first value is held; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            await self._loaded.wait()

    async def reload(self) -> bool:
        """Load now; True on success. Failures keep the last value and mark it unhealthy."""
        replaced = self._replaced
        self._loading += 1
        try:
            value = await self._load()
        except StoreUnavailable as exc:
            # Warn on the transition only: an outage retried every second must not flood logs.
            # A store reset is warned about once, by the restorer (gateway.state.restore).
            level = logging.WARNING if self.healthy and not isinstance(exc, StoreReset) else logging.DEBUG
            log.log(level, "snapshot %s: store unavailable, keeping last value: %s", self._channel, exc)
            self.healthy = False
            return False
        except Exception:
            # A bug in load() must not kill the refresher: keep serving the last value.
            log.exception("snapshot %s: load failed, keeping last value", self._channel)
            self.healthy = False
            return False
        finally:
            self._loading -= 1
            patches = [patch for number, patch in self._patches if number > replaced]
            if not self._loading:
                self._patches.clear()
        if replaced != self._replaced:
            # SECURITY: a local write (a revocation) landed while this load ran, so the load may
            # predate it and would roll it back until the next reload - lost for good if the
            # store is reset meanwhile (App. C). Writes made by ``update`` are applied again on
            # top of the load; after a bare ``replace`` the load is discarded (that write's own
            # publish brings a reload that sees it; until then the local value stands).
            if len(patches) != self._replaced - replaced:
                return True
            for patch in patches:
                value = patch(value)
        self.value, self.loaded_at, self.healthy = value, time.time(), True
        self._loaded.set()
        self._notify()
        return True

    async def _run(self) -> None:
        while True:
            try:
                sub = await self._store.subscribe(self._channel)
            except StoreUnavailable:
                self.healthy = False
                # Still try to load: a first value is worth having even without propagation.
                if await self.reload():
                    self.healthy = False
                await asyncio.sleep(self._retry)
                continue
            try:
                await self._follow(sub)
            finally:
                await sub.close()
            self.healthy = False
            await asyncio.sleep(self._retry)

    async def _follow(self, sub: Subscription) -> None:
        """Reload on messages and timers until the subscription breaks."""
        wake = asyncio.Event()
        broken = False

        async def listen() -> None:
            nonlocal broken
            with contextlib.suppress(StoreUnavailable):
                async for _channel, _message in sub:
                    wake.set()
            broken = True
            wake.set()

        # A separate listener task, so timers never cancel a pub/sub read halfway through.
        listener = asyncio.create_task(listen(), name=f"snapshot-listen:{self._channel}")
        try:
            while not broken:
                wake.clear()  # cleared before loading: a change during the load reloads again
                ok = await self.reload()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._resync if ok else self._retry):
                        await wake.wait()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


class SnapshotBacked(Generic[T]):
    """Lifecycle of a service whose state is one ``SyncedSnapshot`` held in ``self._snapshot``
    (``SnapshotBacked[V]``: a snapshot of ``V`` values).

    Stopping only ends the refresher: the last value stays readable (a stopped instance must
    not forget a revocation or a rotated secret).
    """

    _snapshot: SyncedSnapshot[T]

    async def start(self) -> None:
        await self._snapshot.start()

    async def stop(self) -> None:
        await self._snapshot.stop()

    async def wait_loaded(self, timeout: float | None = None) -> None:
        await self._snapshot.wait_loaded(timeout)

    async def reload(self) -> bool:
        """Load now; True on success (a failure keeps the last value)."""
        return await self._snapshot.reload()

    def watch(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` after every new value of the snapshot (``SyncedSnapshot.watch``)."""
        self._snapshot.watch(callback)

    @property
    def loaded(self) -> bool:
        return self._snapshot.loaded

    @property
    def healthy(self) -> bool:
        """False while the store is unreachable; the last value is still served."""
        return self._snapshot.healthy

    @property
    def loaded_at(self) -> float | None:
        return self._snapshot.loaded_at
