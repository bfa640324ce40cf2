"""Upstream pools: round robin with passive ejection, behind one small transport interface.

``UpstreamTransport`` is the seam ARCHITECTURE.md asks for: the proxy only calls ``send`` and
``websocket``; today's implementation is aiohttp's client (one keep-alive pool per upstream),
and a leaner httptools transport can replace it without touching the pipeline.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.config.model import UpstreamConfig
from gateway.errors import UpstreamTimeout, UpstreamUnavailable

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

    def order(self, now: float | None = None) -> list[Endpoint]:
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


class UpstreamTransport(Protocol):
    async def send(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
        *,
        retryable: bool,
    ) -> aiohttp.ClientResponse: ...

    async def websocket(
        self, target: str, headers: CIMultiDict[str], protocols: tuple[str, ...]
    ) -> aiohttp.ClientWebSocketResponse: ...

    async def close(self) -> None: ...


def upstream_ssl_context(config: UpstreamConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.tls.ca_file)
    if config.tls.client_cert and config.tls.client_key:
        context.load_cert_chain(config.tls.client_cert, config.tls.client_key)
    if not config.tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class AiohttpTransport:
    """One ``ClientSession`` (one keep-alive pool) for all endpoints of one upstream."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.balancer = Balancer(
            [Endpoint(url, URL(url).raw_authority) for url in config.urls],
            max_fails=config.max_fails,
            eject_for=config.eject_for,
        )
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=None,
            sock_connect=config.connect_timeout,
            sock_read=config.read_timeout,
        )
        self._ssl = upstream_ssl_context(config) if any(u.startswith("https:") for u in config.urls) else None
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily so it binds to the running loop of the worker that uses it.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.config.pool_size,
                ssl=self._ssl if self._ssl else True,
                keepalive_timeout=30,
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                # SECURITY: no cookie jar, or one client's cookies would reach the next.
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                trust_env=False,
                max_line_size=65536,
                max_field_size=65536,
            )
        return self._session

    async def send(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterable[bytes] | None,
        *,
        retryable: bool,
    ) -> aiohttp.ClientResponse:
        session = self._get_session()
        last_error: Exception | None = None
        for endpoint in self.balancer.order():
            headers["Host"] = endpoint.host_header
            url = URL(endpoint.url + target, encoded=True)
            try:
                response = await session.request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    compress=None,
                    chunked=None,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self.balancer.failed(endpoint)
                last_error = exc
                if retryable:
                    continue
                break
            except aiohttp.SocketTimeoutError as exc:
                raise UpstreamTimeout("The upstream did not answer in time") from exc
            except (aiohttp.ClientError, OSError) as exc:
                self.balancer.failed(endpoint)
                raise UpstreamUnavailable("The upstream connection failed") from exc
            self.balancer.succeeded(endpoint)
            return response
        raise UpstreamUnavailable("No upstream could be reached") from last_error

    async def websocket(
        self, target: str, headers: CIMultiDict[str], protocols: tuple[str, ...]
    ) -> aiohttp.ClientWebSocketResponse:
        session = self._get_session()
        last_error: Exception | None = None
        for endpoint in self.balancer.order():
            headers["Host"] = endpoint.host_header
            base = URL(endpoint.url)
            scheme = "wss" if base.scheme == "https" else "ws"
            url = URL(f"{scheme}://{base.raw_authority}{target}", encoded=True)
            try:
                ws = await session.ws_connect(
                    url,
                    headers=headers,
                    protocols=protocols,
                    autoping=False,
                    max_msg_size=0,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5),
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                self.balancer.failed(endpoint)
                last_error = exc
                continue
            except aiohttp.WSServerHandshakeError as exc:
                raise UpstreamUnavailable("The upstream refused the WebSocket upgrade") from exc
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise UpstreamUnavailable("The upstream connection failed") from exc
            self.balancer.succeeded(endpoint)
            return ws
        raise UpstreamUnavailable("No upstream could be reached") from last_error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class UpstreamRegistry:
    """Pools survive reloads when their upstream's config is unchanged (no cold pools)."""

    def __init__(self) -> None:
        self._pools: dict[UpstreamConfig, AiohttpTransport] = {}

    def pools_for(self, configs: dict[str, UpstreamConfig]) -> dict[str, AiohttpTransport]:
        result: dict[str, AiohttpTransport] = {}
        for name, config in configs.items():
            if config not in self._pools:
                self._pools[config] = AiohttpTransport(config)
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
