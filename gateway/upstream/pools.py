"""Upstream pools: round robin with passive ejection, behind one small transport interface.

``UpstreamTransport`` is the seam ARCHITECTURE.md asks for: the proxy only calls ``send`` and
``websocket``. Two implementations keep one keep-alive pool per upstream: a lean one on
httptools (``transport_httptools.py``, the default) and aiohttp's client
(``transport_aiohttp.py``); ``transports.open_transport`` picks one per upstream config and is
handed to ``UpstreamRegistry`` by the server, so this module imports neither.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config.model import UpstreamConfig
from gateway.upstream.forwarding import UpstreamHeaders

# RFC 9110 §9.2.2; a request with a body is never retried (it may have been half consumed).
IDEMPOTENT_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))


@dataclass
class Endpoint:
    url: str
    host_header: str
    failures: int = 0
    ejected_until: float = 0.0


@dataclass
class Balancer:
    """Round robin over endpoints; ``max_fails`` consecutive failures eject one for a while."""

    endpoints: list[Endpoint]
    max_fails: int
    eject_for: float
    _next: int = field(default=0)

    @classmethod
    def for_upstream(cls, config: UpstreamConfig) -> Balancer:
        return cls(
            [Endpoint(url, URL(url).raw_authority) for url in config.urls],
            max_fails=config.max_fails,
            eject_for=config.eject_for,
        )

    def order(self, now: float | None = None) -> list[Endpoint]:
        endpoints = self.endpoints
        if len(endpoints) == 1:
            # One endpoint: healthy or ejected, it is the whole order (see the last line) — no
            # clock read and no lists per request. The caller only iterates it.
            return endpoints
        now = time.monotonic() if now is None else now
        start = self._next % len(self.endpoints)
        self._next += 1
        rotated = self.endpoints[start:] + self.endpoints[:start]
        healthy = [e for e in rotated if e.ejected_until <= now]
        # With every endpoint ejected, trying them beats refusing outright.
        return healthy or rotated

    def failed(self, endpoint: Endpoint, now: float | None = None) -> None:
        endpoint.failures += 1
        if endpoint.failures >= self.max_fails:
            endpoint.ejected_until = (time.monotonic() if now is None else now) + self.eject_for
            endpoint.failures = 0

    def succeeded(self, endpoint: Endpoint) -> None:
        endpoint.failures = 0
        endpoint.ejected_until = 0.0


class UpstreamResponse(Protocol):
    """The head of an upstream answer and a way to stream its body.

    ``iter_chunks`` raises ``UpstreamTimeout`` / ``UpstreamUnavailable`` when the body stalls or
    breaks; ``release`` returns the connection to the pool (or closes it if the body was not
    read to the end) and is safe to call twice.
    """

    # Read-only to the proxy, so an implementation may hold a narrower headers type
    # (aiohttp's client: always a ``CIMultiDictProxy``).
    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def headers(self) -> CIMultiDict[str] | CIMultiDictProxy[str]: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    def whole_body(self) -> bytes | None:
        """The entire body when all of it has already arrived, else ``None`` (then stream it
        with ``iter_chunks``). Lets a small answer go out as one write, head and body."""
        ...

    def release(self) -> None: ...

    def discard(self) -> None:
        """Close the connection without reading on (a withheld body); ``release`` is then a no-op."""
        ...


class UpstreamTransport(Protocol):
    """One pool per upstream. Errors before a response head are ``UpstreamUnavailable`` (connect
    failure: the next endpoint is tried when ``retryable``) or ``UpstreamTimeout``. ``send``'s
    ``headers``: ``Name: value`` lines in wire order, with the place the endpoint's Host goes
    (``forwarding.UpstreamHeaders``)."""

    balancer: Balancer

    async def send(
        self,
        method: str,
        target: str,
        headers: UpstreamHeaders,
        body: AsyncIterable[bytes] | None,
        *,
        retryable: bool,
    ) -> UpstreamResponse: ...

    async def websocket(
        self, target: str, headers: CIMultiDict[str], protocols: tuple[str, ...]
    ) -> aiohttp.ClientWebSocketResponse: ...

    async def close(self) -> None: ...


class UpstreamRegistry:
    """Pools survive reloads when their upstream's config is unchanged (no cold pools)."""

    def __init__(self, open_transport: Callable[[UpstreamConfig], UpstreamTransport]) -> None:
        self._open = open_transport  # gateway.upstream.transports.open_transport in the server
        self._pools: dict[UpstreamConfig, UpstreamTransport] = {}

    def pools_for(self, configs: Mapping[str, UpstreamConfig]) -> dict[str, UpstreamTransport]:
        result: dict[str, UpstreamTransport] = {}
        for name, config in configs.items():
            if config not in self._pools:
                self._pools[config] = self._open(config)
            result[name] = self._pools[config]
        return result

    async def retire_unused(self, current: Callable[[], Mapping[str, UpstreamConfig]], delay: float) -> None:
        """Close pools the current runtime does not use, once in-flight requests had ``delay``."""
        if all(c in current().values() for c in self._pools):
            return
        await asyncio.sleep(delay)
        keep = set(current().values())  # asked again: another reload may have come meanwhile
        for config in [c for c in self._pools if c not in keep]:
            await self._pools.pop(config).close()

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
