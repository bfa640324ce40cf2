"""``StoreGeneration``: tells a shared store that came back empty or older from one that merely
was unreachable (SPEC Appendix C, "Store reset").

The first instance to reach an empty store writes a random id under ``store:generation``; every
instance adopts the id it finds. A store restarted without persistence, ``FLUSHALL``ed, or
failed over to a replica that never had the key has no marker (or, once another instance
noticed first, a different one): that is a reset. A store that came back *older* but with the
marker (a replica that lagged, a restart from an old snapshot) is caught by counters going
back: every security write (a revocation, a grant, a lockout) increments ``store:seq``
(``bump``), and a read below the highest value this instance has seen is a reset; the kill
switch set version going back reports it too (``report``).

Cost: the periodic store probe (``server._watch_store``, once a second) reads the marker and the
counter instead of sending PING, every snapshot load checks them once after reading, and a
security write costs one INCR more: detection adds no store call to the request path. Until
the reset is handled (the instance's memory written back, ``gateway.state.restore``),
``verify`` refuses every load: a snapshot never replaces what it enforces with what a
forgetful store says.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore

MARKER_KEY = "store:generation"
SEQ_KEY = "store:seq"

log = logging.getLogger(__name__)


class StoreReset(StoreUnavailable):
    """The store forgot state this instance holds; the load is discarded (memory kept)."""


def new_generation() -> bytes:
    return secrets.token_hex(16).encode()


class StoreGeneration:
    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.known: bytes | None = None  # the marker this instance's memory agrees with
        self.pending: str | None = None  # why a reset is being handled, None when none is
        self.seen = 0  # the highest store:seq this instance has read or written
        self._renewals = 0  # write-backs finished (see begin/verify)
        self._listeners: list[Callable[[str], None]] = []

    def on_reset(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` (synchronously) when a reset is first noticed."""
        self._listeners.append(callback)

    async def check(self) -> bool:
        """Read the marker and the counter (adopting a marker at first contact); True while a
        reset is pending. ``StoreUnavailable`` when the store does not answer."""
        # Captured before reading: what is compared must be what held when the read began
        # (another task may adopt or renew the marker meanwhile; a write may raise the counter).
        known, renewals, floor = self.known, self._renewals, self.seen
        current, raw_seq = await asyncio.gather(self._store.get(MARKER_KEY), self._store.get(SEQ_KEY))
        seq = int(raw_seq) if raw_seq and raw_seq.isdigit() else 0  # garbage counts as gone back
        if renewals != self._renewals:
            return self.pending is not None  # a write-back finished meanwhile: this read predates it
        if known is None:
            if current is None:
                current = await self._store.compare_and_set(MARKER_KEY, None, new_generation())
            if self.known is None:
                self.known = current
            self.seen = max(self.seen, seq)
        elif current != known:
            self.report("marker missing" if current is None else "marker changed")
        elif seq < floor:
            self.report("security writes went back")
        elif self.pending is None:
            self.seen = max(self.seen, seq)
        return self.pending is not None

    def begin(self) -> int:
        """For loaders, before reading: a token ``verify`` checks that no write-back finished
        while the load read (its data may then predate the write-back)."""
        return self._renewals

    async def verify(self, since: int) -> None:
        """For loaders, after reading: ``StoreReset`` unless the store still holds what this
        instance knows and held it throughout the load begun at ``since`` (``begin``)."""
        if await self.check() or since != self._renewals:
            raise StoreReset("state store was reset; keeping the state held in memory")

    async def bump(self) -> None:
        """After a security write: count it, so a store that later comes back without it is
        seen to have gone back. ``StoreUnavailable``."""
        self.seen = max(self.seen, await self._store.incr(SEQ_KEY))

    def report(self, reason: str) -> None:
        """A reset was noticed (here, by a loader, or by the kill-switch version going back)."""
        if self.pending is not None:
            return
        self.pending = reason
        for callback in self._listeners:
            try:
                callback(reason)
            except Exception:
                log.exception("store reset listener failed")

    async def renew(self) -> bytes:
        """After this instance wrote its memory back: adopt the store's marker, replacing it
        when it is still the old one (a lagging replica kept it) so every other instance sees
        the reset too and writes back what it holds. Clears ``pending``."""
        await self._store.set_max(SEQ_KEY, self.seen)  # the counter never appears to go back
        current = await self._store.get(MARKER_KEY)
        if current is None or current == self.known:
            current = await self._store.compare_and_set(MARKER_KEY, current, new_generation())
        assert current is not None  # compare_and_set on our own read returns a value
        self.known, self.pending = current, None
        self._renewals += 1
        return current


__all__ = ["MARKER_KEY", "SEQ_KEY", "StoreGeneration", "StoreReset", "new_generation"]
