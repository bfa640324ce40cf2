"""The httptools implementation of ``UpstreamTransport``: a lean keep-alive pool per endpoint.

aiohttp's client machinery costs ≈70 µs per request (ARCHITECTURE.md, "Performance budget"); an
``asyncio.Protocol`` parsed by httptools (llhttp) costs a fraction of it. The request coroutine
awaits futures that the protocol callbacks resolve: no task per request, no regex, the head in
one write.

The parts: ``httptools_connection`` (one connection: the response parser, the upload, the rules
that keep a reused connection in step with its responses), ``httptools_pool`` (idle connections
per endpoint, the response and its release), ``request_head`` (the request's framing). This module
picks the endpoint and retries: a connection that fails to open is retried on the next endpoint
when the request allows it, and a reused connection that dies before any response byte (the
server closed it between requests, a race every keep-alive client has) is retried once on a
fresh connection when there is no body to replay and the method is idempotent (RFC 9112 §9.3.1,
as aiohttp does).

WebSocket upgrades are rare and stay on aiohttp: an internal ``AiohttpTransport`` shares this
transport's balancer, so ejections seen on either path steer both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

import aiohttp
from multidict import CIMultiDict

from gateway.config.model import UpstreamConfig
from gateway.errors import UpstreamUnavailable
from gateway.upstream.forwarding import UpstreamHeaders
from gateway.upstream.httptools_connection import StaleConnection
from gateway.upstream.httptools_pool import ConnectFailed, EndpointPool, HttptoolsResponse
from gateway.upstream.pools import IDEMPOTENT_METHODS, Balancer
from gateway.upstream.request_head import request_head
from gateway.upstream.transport_aiohttp import AiohttpTransport, upstream_ssl_context


class HttptoolsTransport:
    """``UpstreamTransport`` over per-endpoint pools of httptools connections."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.balancer = Balancer.for_upstream(config)
        context = upstream_ssl_context(config) if any(u.startswith("https:") for u in config.urls) else None
        self._pools = {url: EndpointPool(url, config, context) for url in config.urls}
        self._websockets: AiohttpTransport | None = None

    async def send(
        self,
        method: str,
        target: str,
        headers: UpstreamHeaders,
        body: AsyncIterable[bytes] | None,
        *,
        retryable: bool,
    ) -> HttptoolsResponse:
        last_error: Exception | None = None
        has_body = body is not None
        for endpoint in self.balancer.order():
            head, length = request_head(method, target, headers, endpoint.host_header, has_body=has_body)
            pool = self._pools[endpoint.url]
            conn = pool.take_idle()
            try:
                if conn is None:
                    response = await self._fresh(pool, method, head, body, length)
                elif body is None:
                    # The usual request: EndpointPool.exchange inline, awaited here and not in a
                    # helper coroutine — one frame fewer, and one fewer to resume, per request.
                    try:
                        pending: asyncio.Future[None] | None = conn.start(head, head_request=method == "HEAD")
                        while pending is not None:
                            await pending
                            pending = conn.head_pending()
                    except StaleConnection:
                        conn.close()
                        # RFC 9112 §9.3.1: replay only what is safe to send twice (no body here).
                        if method not in IDEMPOTENT_METHODS:
                            raise
                        response = await self._fresh(pool, method, head, body, length)
                    except BaseException:  # cancelled, timed out or broken: never reused
                        conn.close()
                        raise
                    else:
                        response = HttptoolsResponse(pool, conn)
                else:  # a body is never replayed: a stale connection fails the request
                    response = await pool.exchange(conn, head, body, length, head_request=method == "HEAD")
            except ConnectFailed as exc:
                self.balancer.failed(endpoint)
                last_error = exc
                if retryable:
                    continue
                break
            except StaleConnection as exc:  # the server's keep-alive race, not a sick upstream
                raise UpstreamUnavailable("The upstream closed a kept-alive connection") from exc
            except UpstreamUnavailable:
                self.balancer.failed(endpoint)
                raise
            if endpoint.failures or endpoint.ejected_until:  # else nothing to forget: no call
                self.balancer.succeeded(endpoint)
            return response
        raise UpstreamUnavailable("No upstream could be reached") from last_error

    @staticmethod
    async def _fresh(
        pool: EndpointPool,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        length: int | None,
    ) -> HttptoolsResponse:
        """The exchange on a newly opened connection."""
        conn = await pool.connect()
        return await pool.exchange(conn, head, body, length, head_request=method == "HEAD")

    async def websocket(
        self, target: str, headers: CIMultiDict[str], protocols: tuple[str, ...]
    ) -> aiohttp.ClientWebSocketResponse:
        if self._websockets is None:
            self._websockets = AiohttpTransport(self.config)
            self._websockets.balancer = self.balancer  # one view of endpoint health for both paths
        return await self._websockets.websocket(target, headers, protocols)

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        if self._websockets is not None:
            await self._websockets.close()
            self._websockets = None
