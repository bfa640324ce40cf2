"""``StoreRestorer``: what an instance does when the shared store came back empty or older
(SPEC Appendix C, "Store reset").

A reset is a fault, not news. From the moment it is noticed (``StoreGeneration``) until this
instance has written its memory back, every snapshot keeps what it enforces (loads are refused)
and ``/_gateway/ready`` says ``degraded``. Then each part writes back what it holds — kill
switches with their expiry, revocation epochs, support grants, lockouts — through the store's
merge primitives: a union where the maximum epoch, the later expiry and a known deletion win,
so every instance that held state may write at once and none loses another's entry. Last, the
marker is renewed (so instances that have not noticed yet do the same), the snapshots reload,
and the act is audited in ``_system`` as ``store.restored`` with counts (the caller hands in
how: the store package does not import the audit trail that is stored in it).

Detection and write-back run on the store probe loop (``server._watch_store``): no request
waits for them, and a reset reported by a loader wakes the loop at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from gateway.errors import StoreUnavailable
from gateway.state.generation import StoreGeneration

log = structlog.get_logger("gateway.state")


class Restorable(Protocol):
    async def restore(self) -> tuple[int, int]:
        """Write back what is held in memory; (held, written). ``StoreUnavailable``."""

    async def reload(self) -> bool:
        """Load from the store again (after the write-back)."""


class StoreRestorer:
    def __init__(
        self,
        generation: StoreGeneration,
        parts: Mapping[str, Restorable],
        audit: Callable[[Mapping[str, Any]], Awaitable[None]],
        *,
        instance_id: str,
        on_reset: Callable[[], None] = lambda: None,
        on_state: Callable[[bool], None] = lambda restoring: None,
    ) -> None:
        self.generation = generation
        self._parts, self._audit, self._instance_id = parts, audit, instance_id
        self._on_reset, self._on_state = on_reset, on_state
        self.restoring = False
        self.resets = 0
        self._reason = ""
        self._noticed_at = 0.0
        self._wake = asyncio.Event()
        generation.on_reset(self._noticed)

    def _noticed(self, reason: str) -> None:
        # Once per reset: the warning, the metric and degraded readiness, however many loaders
        # and probes notice it until the write-back is done.
        self.restoring, self._reason, self._noticed_at = True, reason, time.monotonic()
        self.resets += 1
        self._on_reset()
        self._on_state(True)
        log.warning(
            "state_store_reset",
            reason=reason,
            instance=self._instance_id,
            detail="the state store forgot security state; enforcing what this instance holds "
            "and writing it back",
        )
        self._wake.set()

    async def probe(self) -> None:
        """One probe of the store (it replaces PING): read the marker, and when a reset is
        pending write this instance's state back. ``StoreUnavailable`` when it does not answer
        (a write-back cut short is retried by the next probe)."""
        if await self.generation.check():
            try:
                await self._restore()
            except StoreUnavailable:
                raise
            except Exception:
                # A bug in one part must not end the probe loop: the reset stays pending (and
                # ready degraded); the next probe tries again.
                log.exception("state_store_restore_failed", instance=self._instance_id)

    async def wait(self, timeout: float) -> None:
        """Sleep until the next probe is due, or until a reset is reported."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()

    async def _restore(self) -> None:
        held: dict[str, int] = {}
        written: dict[str, int] = {}
        for name, part in self._parts.items():
            held[name], written[name] = await part.restore()
        await self.generation.renew()
        for part in self._parts.values():
            with contextlib.suppress(StoreUnavailable):
                await part.reload()
        self.restoring = False
        self._on_state(False)
        took_ms = round((time.monotonic() - self._noticed_at) * 1000)
        log.info("state_store_restored", instance=self._instance_id, held=held, written=written, ms=took_ms)
        try:
            await self._audit(
                {
                    "instance": self._instance_id,
                    "reason": self._reason,
                    "held": held,
                    "written": written,
                    "ms": took_ms,
                }
            )
        except (OSError, ValueError):
            log.error("state_store_restored_unaudited", instance=self._instance_id)


__all__ = ["Restorable", "StoreRestorer"]
