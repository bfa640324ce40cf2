"""The audit write queue: an audit record leaves the request at once (issue 15, item 2).

A request files its record with ``AuditTrail.submit``, which puts the record's copies (one per
tenant) on a bounded in-process queue and returns without awaiting anything. One writer task
per trail drains the queue; nothing a request waits on ever waits on the store for an audit
write, so a hung Redis (SIGSTOP) cannot hold a keep-alive connection whose previous request
hit an audited route.

Order: the writer takes a batch from the head of the queue and appends it tenant by tenant,
the tenants concurrently and each tenant's records in queue order (each tenant's trail is its
own hash chain, so only the order within one tenant matters; ``ChainWriter`` keeps the chain
correct under concurrency). While anything is spooled, queued records go *behind* the spool,
so one process's records of a tenant are always chained in the order they were made.

Spilling to the spool (``gateway.audit.spool``): an append that fails or takes longer than
``write_timeout`` (a dead, hung or slow store) stops the batch, which spills what is left of
it and the whole queue to the spool, in order, with one fsync; so does ``submit`` when the
queue is full. Records
are never dropped or sampled. The writer then replays the spool every ``retry_interval``.

Exactly once across a spill that overtakes an append in flight: the spilled copy is the
spool's from then on. If the append had already journalled its attempt (``rec.attempt``, set
just before the store call), the spool line carries it; if it had not, ``_journal`` writes the
spool's ``try`` line before the append is sent. Either way the replay finds an append that
landed by its seq and hash and does not repeat it. Replays and the writer's batches exclude
each other (one mutex), so a replay never races an append of the same record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from gateway.audit.chain import ChainWriter
from gateway.audit.spool import PendingRecord, Spool
from gateway.errors import StoreUnavailable

log = structlog.get_logger("gateway.audit")

BATCH = 256  # records per batch: one writer pass, the tenants of it concurrently
LANES = 16  # tenants appended at once: well inside the store's connection pool
SPILL_INTERVAL = 0.1  # while the store is down, queued records reach the disk in batches this often


@dataclass(slots=True)
class _Batch:
    lanes: asyncio.Semaphore
    failure: str | None = None  # why the batch stopped ("store-slow", "store-unavailable")


@dataclass(slots=True, eq=False)
class _Waiter:
    """One ``record()`` (or ``flush()``) waiting until its records are stored or spooled."""

    future: asyncio.Future[None]
    remaining: int


class AuditWriter:
    """The bounded queue and the task that drains it into the chain (or the spool)."""

    def __init__(
        self,
        chain: ChainWriter,
        spool: Spool,
        *,
        queue_size: int,
        write_timeout: float,
        retry_interval: float,
    ) -> None:
        self._chain, self._spool = chain, spool
        self._size = max(1, queue_size)
        self._write_timeout = write_timeout
        self._retry_interval = retry_interval
        self._retry_at = 0.0  # monotonic: no replay before this
        self._queue: deque[PendingRecord] = deque()
        self._inflight: list[PendingRecord] = []  # the current batch, minus what is stored
        self._waiters: dict[PendingRecord, list[_Waiter]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._mutex = asyncio.Lock()
        self._replaying = False

    @property
    def queued(self) -> int:
        """Records accepted and neither stored nor spooled yet (for the metric)."""
        return len(self._queue) + sum(1 for rec in self._inflight if rec.source is None)

    # -- accepting -------------------------------------------------------------------------
    def put(self, records: Sequence[PendingRecord], future: asyncio.Future[None] | None = None) -> None:
        """Queue the copies of one event; never awaits. With the queue full they are spilled
        (OSError if the spool cannot be written: nothing was accepted then)."""
        self._ensure_running()
        if future is not None:
            self._wait_on(records, future)
        if len(self._queue) + len(records) > self._size:
            try:
                self._spill(extra=records)
            except OSError:
                for rec in records:  # the caller hears it from this raise, not from a waiter
                    self._waiters.pop(rec, None)
                raise
            log.warning("audit.queue_full_spooled", spooled=self._spool.pending)
            self._wake.set()
            return
        self._queue.extend(records)
        self._wake.set()

    async def flush(self) -> None:
        """Return once everything accepted so far is stored or spooled."""
        pending = [rec for rec in (*self._inflight, *self._queue) if rec.source is None]
        if not pending:
            return
        future = asyncio.get_running_loop().create_future()
        self._wait_on(pending, future)
        self._ensure_running()
        await future

    # -- the writer task -------------------------------------------------------------------
    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop (tests run one per test): loop-bound helpers are rebuilt.
            self._loop, self._wake, self._mutex = loop, asyncio.Event(), asyncio.Lock()
            self._task = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except Exception:
                # A bug must not end the writer: what it held is still queued or spooled.
                log.exception("audit.writer_failed")
                await asyncio.sleep(SPILL_INTERVAL)

    async def _step(self) -> None:
        replay_due = self._spool.pending and time.monotonic() >= self._retry_at
        if not self._queue and not replay_due:
            await self._idle()
            return
        async with self._mutex:
            if self._spool.pending and time.monotonic() >= self._retry_at:
                await self._replay_locked()
            if self._spool.pending:
                self._spill_quietly()  # behind the spool: this process's order is kept
            elif self._queue:
                await self._write_batch()
        if self._spool.pending or (self._queue and self._retry_at > time.monotonic()):
            # Store down (or the disk refusing): let records gather and reach the disk together
            # (one fsync), and never spin on a store that fails at once.
            await asyncio.sleep(SPILL_INTERVAL)

    async def _idle(self) -> None:
        self._wake.clear()
        if self._queue:
            return
        timeout = max(0.0, self._retry_at - time.monotonic()) if self._spool.pending else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _write_batch(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
        self._inflight = batch[:]
        lanes: dict[str, list[PendingRecord]] = {}
        for rec in batch:
            lanes.setdefault(rec.tenant, []).append(rec)
        state = _Batch(asyncio.Semaphore(LANES))
        await asyncio.gather(*(self._lane(recs, state) for recs in lanes.values()))
        if state.failure is not None:
            self._retry_at = time.monotonic() + self._retry_interval
            self._spill_quietly()
            log.warning("audit.spooled", reason=state.failure, spooled=self._spool.pending)
        leftover = [rec for rec in self._inflight if rec.source is None]
        self._inflight = []
        # Only if the spool could not be written either: back to the head, nothing is lost.
        self._queue.extendleft(reversed(leftover))

    async def _lane(self, records: list[PendingRecord], state: _Batch) -> None:
        """Append one tenant's records in order, each within ``write_timeout``; at the first
        failure (here or in another lane) the rest stays in flight, for the spill."""
        async with state.lanes:
            for rec in records:
                if state.failure is not None or rec.source is not None:
                    return  # a failure, or spilled meanwhile (queue full): the spool owns it
                try:
                    async with asyncio.timeout(self._write_timeout):
                        await self._chain.append(rec, functools.partial(self._journal, rec))
                except TimeoutError:
                    state.failure = state.failure or "store-slow"
                    return
                except (StoreUnavailable, OSError):
                    state.failure = state.failure or "store-unavailable"
                    return
                if rec.source is None:  # else: spilled mid-append; the replay finds it stored
                    self._inflight.remove(rec)
                    self._resolve(rec)

    def _journal(self, rec: PendingRecord, seq: int, hash_: str) -> None:
        """Just before an append is sent: a record spilled while this append was under way
        gets its ``try`` line, so the replay can tell whether the append landed."""
        if rec.source is not None:
            self._spool.mark_try(rec, seq, hash_)

    # -- the spool -------------------------------------------------------------------------
    def _spill(self, extra: Sequence[PendingRecord] = ()) -> None:
        """Move the rest of the batch, the queue and ``extra`` to the spool, in that order."""
        batch = [rec for rec in self._inflight if rec.source is None]
        batch += [*self._queue, *extra]
        if not batch:
            return
        self._spool.add(batch)  # OSError: nothing moved
        self._queue.clear()
        for rec in batch:
            self._resolve(rec)

    def _spill_quietly(self) -> None:
        try:
            self._spill()
        except OSError as exc:
            # The store and the disk both refuse: keep the records queued and retry; whoever
            # awaits them hears it now.
            log.error("audit.spool_failed", queued=self.queued)
            self._fail_waiters([*self._inflight, *self._queue], exc)

    async def replay(self) -> int:
        """Append the spooled records in order (``AuditTrail.replay_spool``)."""
        self._ensure_running()
        async with self._mutex:
            return await self._replay_locked()

    async def _replay_locked(self) -> int:
        if self._replaying:
            return 0
        self._replaying = True
        written = 0
        try:
            self._spool.adopt_orphans()
            while (rec := self._spool.peek()) is not None:
                try:
                    if not (await self._chain.already_stored(rec)):
                        await self._chain.append(rec, functools.partial(self._spool.mark_try, rec))
                except StoreUnavailable:
                    self._retry_at = time.monotonic() + self._retry_interval
                    break
                self._spool.done(rec)
                written += 1
        finally:
            self._replaying = False
        if written:
            log.info("audit.spool_replayed", written=written, pending=self._spool.pending)
        return written

    # -- waiters ---------------------------------------------------------------------------
    def _wait_on(self, records: Sequence[PendingRecord], future: asyncio.Future[None]) -> None:
        waiter = _Waiter(future, len(records))
        for rec in records:
            self._waiters.setdefault(rec, []).append(waiter)

    def _resolve(self, rec: PendingRecord) -> None:
        for waiter in self._waiters.pop(rec, ()):
            waiter.remaining -= 1
            if waiter.remaining == 0 and not waiter.future.done():
                waiter.future.set_result(None)

    def _fail_waiters(self, records: Sequence[PendingRecord], exc: BaseException) -> None:
        for rec in records:
            for waiter in self._waiters.pop(rec, ()):
                if not waiter.future.done():
                    waiter.future.set_exception(exc)

    # -- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the writer; whatever is still queued goes to the spool (the next process, or
        this one's next start, replays it)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            self._spill()
        except OSError:
            log.error("audit.unspooled_at_close", lost=self.queued)
        self._inflight = []
