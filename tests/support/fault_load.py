"""Keep-alive load for the store-fault tests (issue 15): every answer timed and counted.

Each client holds ONE keep-alive connection (``limit=1``) and cycles through its requests, so a
request that follows an audited one on the same connection is measured too: the pattern in
which a hung Redis used to hold the next request for 20-28 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

FAILED = -1  # no HTTP answer at all (connection refused, reset, client timeout)


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # a label for the report ("audited", "health", "switched", ...)
    base: str  # the gateway's URL: clients spread over several gateways take one each
    path: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Sample:
    kind: str
    status: int
    started: float  # time.monotonic() when the request was sent
    seconds: float
    request_id: str | None


@dataclass
class Load:
    """Clients running until ``stop()``; ``samples`` fills as answers arrive."""

    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, clients: Sequence[Sequence[Step]], *, pace: float = 0.05, timeout: float = 60.0) -> None:
        for steps in clients:
            self._tasks.append(asyncio.create_task(self._client(steps, pace, timeout)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, steps: Sequence[Step], pace: float, timeout: float) -> None:
        connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection per client
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as http:
            while not self._stop.is_set():
                for step in steps:
                    self.samples.append(await _one(http, step))
                await asyncio.sleep(pace)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.started < end]


async def _one(http: aiohttp.ClientSession, step: Step) -> Sample:
    started = time.monotonic()
    try:
        async with http.get(step.base + step.path, headers=dict(step.headers)) as response:
            await response.read()
            status, request_id = response.status, response.headers.get("X-Request-ID")
    except (aiohttp.ClientError, TimeoutError):
        status, request_id = FAILED, None
    return Sample(step.kind, status, started, time.monotonic() - started, request_id)


def summary(samples: Sequence[Sample]) -> dict[str, object]:
    """Counts by kind and status, and latency figures, for a printed report."""
    times = sorted(s.seconds for s in samples)

    def pct(p: float) -> float:
        return round(times[min(len(times) - 1, int(p * len(times)))] * 1000, 1) if times else 0.0

    by = Counter(f"{s.kind}:{s.status}" for s in samples)
    return {
        "requests": len(samples),
        "by_kind_status": dict(sorted(by.items())),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": round(times[-1] * 1000, 1) if times else 0.0,
    }
