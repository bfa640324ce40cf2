"""The pool side of the httptools upstream transport: idle keep-alive connections to one
endpoint (``EndpointPool``), and the response handed to the proxy (``HttptoolsResponse``), whose
``release`` gives its connection back only when the exchange left it in step.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from functools import partial

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config.model import UpstreamConfig
from gateway.upstream.httptools_connection import UpstreamConnection

IDLE_TTL = 30.0  # like AiohttpTransport's keepalive_timeout: retire before most servers do


class ConnectFailed(Exception):
    """No connection could be opened: nothing was sent, so the next endpoint may be tried."""


class EndpointPool:
    """Idle keep-alive connections to one endpoint, reused last-in first-out (hot ones stay warm)."""

    __slots__ = ("_clock", "_closed", "_connect_timeout", "_host", "_idle", "_max_idle", "_port",
                 "_read_timeout", "_server_hostname", "_ssl", "live")  # fmt: skip

    def __init__(self, url: str, config: UpstreamConfig, ssl_context: ssl.SSLContext | None) -> None:
        parsed = URL(url)  # config validation guarantees http(s)://host:port without a path
        if parsed.host is None or parsed.port is None:
            raise ValueError(f"not an http(s)://host:port URL: {url!r}")
        https = parsed.scheme == "https"
        self._host, self._port = parsed.host, parsed.port
        self._ssl = ssl_context if https else None
        self._server_hostname = parsed.host if https else None
        self._connect_timeout, self._read_timeout = config.connect_timeout, config.read_timeout
        self._max_idle = config.pool_size
        self._idle: deque[UpstreamConnection] = deque()
        self.live: set[UpstreamConnection] = set()
        self._closed = False
        # The loop's clock (uvloop's is not time.monotonic), taken at the first connect: before
        # it no connection is idle, so this one is never read.
        self._clock: Callable[[], float] = time.monotonic

    def take_idle(self) -> UpstreamConnection | None:
        idle = self._idle
        if not idle:
            return None
        now = self._clock()
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.alive and conn.idle_until >= now:
                return conn
            conn.close()  # expired: the ones below it are older still and go the same way
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        factory = partial(UpstreamConnection, self, loop, self._read_timeout)
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    factory, self._host, self._port, ssl=self._ssl, server_hostname=self._server_hostname
                )
        except OSError as exc:  # refused, unreachable, TLS verification, and the timeout (→ 502)
            raise ConnectFailed(f"{self._host}:{self._port}: {exc!r}") from exc
        return conn

    async def exchange(
        self,
        conn: UpstreamConnection,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        length: int | None,
        *,
        head_request: bool,
    ) -> HttptoolsResponse:
        """One request and its answer's head on ``conn``. (``HttptoolsTransport.send`` has the
        bodiless case inline: one coroutine frame fewer per request.)"""
        try:
            if body is None:
                pending: asyncio.Future[None] | None = conn.start(head, head_request=head_request)
            else:
                conn.begin(head_request=head_request)
                await conn.send_request(head, body, length)
                pending = conn.head_pending()
            while pending is not None:
                await pending
                pending = conn.head_pending()
        except BaseException:  # cancelled, timed out or broken: half an exchange is never reused
            conn.close()
            raise
        return HttptoolsResponse(self, conn)

    def release(self, conn: UpstreamConnection) -> None:
        if self._closed or not conn.reusable():
            # SECURITY: a half-read response left on the socket would be taken as the next
            # request's answer (response desync): only a fully consumed exchange is reused.
            conn.close()
            return
        conn.idle = conn.reused = True
        now = self._clock()
        conn.idle_until = now + IDLE_TTL
        idle = self._idle
        idle.append(conn)
        if len(idle) > self._max_idle or idle[0].idle_until < now:
            coldest = idle.popleft()  # the cap, or one stale sweep per release
            coldest.idle = False
            coldest.close()

    def forget(self, conn: UpstreamConnection) -> None:
        self.live.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)  # closed by the server while idle: never hand it out

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().idle = False
        for conn in list(self.live):
            conn.transport.abort()
        for _ in range(10):  # let connection_lost run, so no transport outlives its loop
            if not self.live:
                break
            await asyncio.sleep(0)


class HttptoolsResponse:
    """A response head and its streamed body; ``release`` gives the connection back (or closes it)."""

    __slots__ = ("_conn", "_pool", "headers", "reason", "status")

    def __init__(self, pool: EndpointPool, conn: UpstreamConnection) -> None:
        self._pool = pool
        self._conn: UpstreamConnection | None = conn
        self.status: int = conn.status
        self.reason: str = conn.reason
        self.headers: CIMultiDict[str] | CIMultiDictProxy[str] = conn.headers

    async def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        # Looked up each time: once released, the connection may carry someone else's answer.
        while self._conn is not None and (chunk := await self._conn.read_chunk()):
            yield chunk

    def whole_body(self) -> bytes | None:
        conn = self._conn
        return conn.take_complete_body() if conn is not None else None

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)

    def discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # never parked: whatever the upstream sent stays unread and is dropped
