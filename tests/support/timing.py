"""A settable clock and a bounded wait, for unit tests of time-driven code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Clock:
    """``clock()`` is ``clock.now`` (by default the time it was made); tests move it by hand."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


async def eventually(check: Callable[[], bool], timeout: float = 3.0, interval: float = 0.01) -> None:
    """Wait until ``check()`` holds; ``TimeoutError`` after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(interval)


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Whether ``check()`` holds within ``timeout`` seconds (polled): for synchronous tests,
    which wait for what they need instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()
