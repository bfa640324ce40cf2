"""The request and the answer writer as the pipeline, the endpoints and the proxy see them, on
either listener: ``typing.Protocol`` classes that aiohttp's ``web.BaseRequest`` and the lean
listener's ``LeanRequest`` / ``LeanDownstream`` (``gateway.http1``) satisfy.

The per-request context types its fields by these, so it imports no listener: the listeners
import the context, never the reverse. Structural types only, so no per-request cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy, MultiMapping

Headers = Mapping[str, str] | CIMultiDict[str] | CIMultiDictProxy[str]


class ServerRequest(Protocol):
    """``ctx.request``: the request line, headers and body stream as the server parsed them."""

    @property
    def method(self) -> str: ...

    @property
    def raw_path(self) -> str: ...

    @property
    def version(self) -> tuple[int, int]: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]: ...

    @property
    def content(self) -> StreamReader: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def body_exists(self) -> bool: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def protocol(self) -> object: ...

    @property
    def host(self) -> str: ...

    @property
    def query(self) -> MultiMapping[str]: ...

    @property
    def cookies(self) -> Mapping[str, str]: ...

    # The request carries its context under ``ContextKey`` (aiohttp's request is a mapping).
    def get(self, key: Any, /) -> Any: ...

    def __setitem__(self, key: Any, value: Any, /) -> None: ...


class AnswerWriter(Protocol):
    """``ctx.downstream`` on the lean listener: writes the answer straight to the connection."""

    @property
    def status(self) -> int: ...

    async def send_whole(
        self, status: int, reason: str | None, headers: Headers, body: bytes, *, force_close: bool = False
    ) -> None: ...

    def write_whole(
        self, status: int, reason: str | None, headers: Headers, body: bytes, *, force_close: bool = False
    ) -> bool:
        """``send_whole`` without a coroutine; True: await ``drain()`` before writing again."""
        ...

    def write_whole_pairs(
        self, status: int, reason: str | None, names: tuple[str, ...], values: tuple[str, ...], body: bytes
    ) -> bool:
        """``write_whole`` of the headers ``names[i]: values[i]``, in that order."""
        ...

    async def drain(self) -> None: ...

    async def start(
        self, status: int, reason: str | None, headers: Headers, content_length: int | None
    ) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    async def end(self) -> None: ...

    def abort(self) -> None: ...
