"""The request as the pipeline stages see it, with exactly the surface they read.

Stages and the proxy read ``ctx.request``: with aiohttp's server that is a ``web.BaseRequest``;
on the lean listener it is a ``LeanRequest`` with the same names and meanings (headers as a
case-insensitive multidict, the body as aiohttp's own ``StreamReader``), built from what the
parser already produced and nothing more.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp._cookie_helpers import parse_cookie_header
from aiohttp.http import HttpVersion
from aiohttp.streams import EMPTY_PAYLOAD, EmptyStreamReader, StreamReader
from multidict import CIMultiDictProxy, MultiDictProxy, istr
from yarl import URL

if TYPE_CHECKING:
    from gateway.auth.jwt import TokenMemo
    from gateway.context import RequestContext


class LeanConnection(Protocol):
    """What a request and its answer writer use of their connection (``protocol.LeanProtocol``),
    so this module and ``downstream.py`` need not import the protocol that builds them."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def client_gone(self) -> bool: ...

    @property
    def drain_cut(self) -> bool: ...

    @property
    def token_memo(self) -> TokenMemo | None: ...

    @property
    def writing_paused(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def writelines(self, data: tuple[bytes, ...]) -> None: ...

    async def drain(self) -> None: ...

    def abort(self) -> None: ...

    def may_keep_alive(self, request: LeanRequest) -> bool: ...


_HOST = istr("Host")  # an istr: looked up without lower-casing it per request


@functools.cache
def _fqdn() -> str:
    return socket.getfqdn()  # what aiohttp answers for a request without Host (HTTP/1.0)


def encoded(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
    """Fields decoded as the connection decodes them (UTF-8, surrogate escapes for anything
    else) back to their bytes on the wire: the escapes make the decoding lossless."""
    return tuple(
        (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
        for name, value in pairs
    )


class LeanRequest:
    """Built by the connection when a head is complete (``protocol.LeanProtocol``), which sets
    every field below itself: no __init__ call per request."""

    __slots__ = (
        "content",
        "content_length",
        "ctx",
        "header_size",
        "headers",
        "keep_alive",
        "method",
        "protocol",
        "raw_path",
        "remote",
        "transport",
        "version",
    )

    protocol: LeanConnection
    transport: asyncio.Transport | None  # the connection's, when the head completed
    remote: str | None
    method: str
    raw_path: str
    version: HttpVersion
    headers: CIMultiDictProxy[str]
    content: StreamReader | EmptyStreamReader
    keep_alive: bool
    content_length: int | None  # the parser's, already checked as digits only
    # Every header name's and value's length, summed while parsing: what the header limits stage
    # would otherwise add up again (``header_limits.enforce_header_limits``).
    header_size: int
    ctx: RequestContext | None

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The fields as they came (after the value's trailing whitespace): read only off the
        common path (the header limits stage's per-field check), so not kept per request."""
        return encoded(self.headers.items())

    @property
    def body_exists(self) -> bool:
        return self.content is not EMPTY_PAYLOAD

    @property
    def host(self) -> str:
        host = self.headers.get(_HOST)
        return host if host is not None else _fqdn()

    @property
    def query(self) -> MultiDictProxy[str]:
        _, _, query = self.raw_path.partition("?")
        return URL.build(query_string=query, encoded=True).query

    @property
    def cookies(self) -> Mapping[str, str]:
        parsed = parse_cookie_header(self.headers.get("Cookie", ""))
        return MappingProxyType({name: morsel.value for name, morsel in parsed})

    # The access logger and the body timer look the context up the way they do on aiohttp's
    # request (``request.get(ContextKey)``); there is one key, so one slot.
    def get(self, _key: object, default: Any = None) -> Any:
        return self.ctx if self.ctx is not None else default

    def __setitem__(self, _key: object, ctx: RequestContext) -> None:
        self.ctx = ctx
