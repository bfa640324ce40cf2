"""``StoreGeneration``: tells a shared store that came back empty or older from one that merely
was unreachable (SPEC Appendix C, "Store reset").

The first instance to reach an empty store writes a random id under ``store:generation``; every
instance adopts the id it finds. A store restarted without persistence, ``FLUSHALL``ed, or
failed over to a replica that never had the key has no marker (or, once another instance
noticed first, a different one): that is a reset. A replica that lagged but already held the
marker is caught by the kill-switch set version going back (``report``).

Cost: the periodic store probe (``server._watch_store``, once a second) reads the marker instead
of sending PING (one GET either way), and every snapshot load checks it once after reading, so
detection adds no store call to the request path. Until the reset is handled (the instance's
memory written back, ``gateway.state.restore``), ``verify`` refuses every load: a snapshot never
replaces what it enforces with what a forgetful store says.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore

MARKER_KEY = "store:generation"

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
        self._listeners: list[Callable[[str], None]] = []

    def on_reset(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` (synchronously) when a reset is first noticed."""
        self._listeners.append(callback)

    async def check(self) -> bool:
        """Read the marker (adopting one at first contact); True while a reset is pending.
        ``StoreUnavailable`` when the store does not answer."""
        current = await self._store.get(MARKER_KEY)
        if self.known is None:
            if current is None:
                current = await self._store.compare_and_set(MARKER_KEY, None, new_generation())
            self.known = current
            return self.pending is not None
        if current != self.known:
            self.report("marker missing" if current is None else "marker changed")
        return self.pending is not None

    async def verify(self) -> None:
        """For loaders, after reading: ``StoreReset`` unless the store still holds what this
        instance knows (so the data just read is not from a store that forgot)."""
        if await self.check():
            raise StoreReset("state store was reset; keeping the state held in memory")

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
        current = await self._store.get(MARKER_KEY)
        if current is None or current == self.known:
            current = await self._store.compare_and_set(MARKER_KEY, current, new_generation())
        assert current is not None  # compare_and_set on our own read returns a value
        self.known, self.pending = current, None
        return current


__all__ = ["MARKER_KEY", "StoreGeneration", "StoreReset", "new_generation"]
