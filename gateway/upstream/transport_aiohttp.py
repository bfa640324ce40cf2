"""The aiohttp-client implementation of ``UpstreamTransport``: one ``ClientSession`` (one
keep-alive pool) per upstream. Also used for WebSocket upgrades by every transport."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy, istr
from yarl import URL

from gateway.config.model import UpstreamConfig
from gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.forwarding import UpstreamHeaders
from gateway.upstream.pools import Balancer

CHUNK = 64 * 1024
_HOST = istr("Host")  # istr: set without case-folding the name on every request


class AiohttpResponse:
    __slots__ = ("_response", "headers", "reason", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.reason = response.reason or ""
        self.headers: CIMultiDictProxy[str] = response.headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK):
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("The upstream stalled mid-response") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable("The upstream connection broke mid-response") from exc

    def whole_body(self) -> bytes | None:
        return None  # aiohttp's client gives no cheap, safe look at its buffer: always stream

    def release(self) -> None:
        self._response.release()

    def discard(self) -> None:
        self._response.close()  # closes the connection instead of returning it to the pool


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
        self.balancer = Balancer.for_upstream(config)
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
        headers: UpstreamHeaders,
        body: AsyncIterable[bytes] | None,
        *,
        retryable: bool,
    ) -> AiohttpResponse:
        session = self._get_session()
        last_error: Exception | None = None
        # The CIMultiDict the pairs describe, Host in its place: the slow path pays for the copy,
        # the httptools path joins the pairs as they are.
        multi: CIMultiDict[str] = CIMultiDict(headers.with_host_slot())
        for endpoint in self.balancer.order():
            multi[_HOST] = endpoint.host_header
            url = URL(endpoint.url + target, encoded=True)
            try:
                response = await session.request(
                    method,
                    url,
                    headers=multi,
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
            return AiohttpResponse(response)
        raise UpstreamUnavailable("No upstream could be reached") from last_error

    async def websocket(
        self, target: str, headers: CIMultiDict[str], protocols: tuple[str, ...]
    ) -> aiohttp.ClientWebSocketResponse:
        session = self._get_session()
        last_error: Exception | None = None
        for endpoint in self.balancer.order():
            headers[_HOST] = endpoint.host_header
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
