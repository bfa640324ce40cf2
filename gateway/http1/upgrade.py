"""The hand-over of a lean-listener connection to aiohttp (a mixin of ``protocol.LeanProtocol``):
a WebSocket upgrade or CONNECT waits for its turn in the connection's queue, then aiohttp's
guarded handler gets the transport and the bytes exactly as its parser must see them, and serves
the rest of the connection as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from gateway.http1.request import encoded

if TYPE_CHECKING:
    from gateway.listener import GuardedServer


class Upgrade:
    """A WebSocket upgrade or CONNECT: the connection goes to aiohttp once it is this one's turn."""

    __slots__ = ("head", "tail")

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head, self.tail = head, tail


class HandOverSettings(Protocol):
    """What the hand-over reads of the listener (``server.LeanServer``)."""

    connections: set[Any]


class UpgradeHandOver:
    """The upgrade methods of ``LeanProtocol``; its other state is declared here for the type
    checker only."""

    _server: HandOverSettings
    _guard: GuardedServer
    transport: asyncio.Transport | None
    _url: bytes
    _header_pairs: list[tuple[str, str]]
    _upgrade: Upgrade | None
    writing_paused: bool
    _cancel_timers: Callable[[], None]
    _update_reading: Callable[[], None]
    _enqueue: Callable[[Any], None]
    _refuse_parse: Callable[[Exception, bytes], None]

    def _head_bytes(self, method: str, version: tuple[int, int]) -> bytes:
        """The head as aiohttp's parser must see it again (only names and values llhttp accepted)."""
        lines = [b"%s %s HTTP/%d.%d\r\n" % (method.encode(), self._url, version[0], version[1])]
        lines.extend(b"%s: %s\r\n" % pair for pair in encoded(self._header_pairs))
        lines.append(b"\r\n")
        return b"".join(lines)

    def _upgrade_at(self, tail: bytes) -> None:
        upgrade = self._upgrade
        if upgrade is None:  # cannot happen: llhttp reports an upgrade only after its head
            self._refuse_parse(httptools.HttpParserError("upgrade"), b"")
            return
        upgrade.tail = tail
        self._update_reading()
        self._enqueue(upgrade)

    def _hand_over(self, upgrade: Upgrade) -> None:
        """The rest of this connection is aiohttp's (WebSocket, CONNECT): its guarded handler is
        given the transport and the bytes exactly as the next parser must see them."""
        transport = self.transport
        assert transport is not None
        self._cancel_timers()
        self._server.connections.discard(self)
        self._guard.open_connections -= 1  # the handler counts itself in connection_made
        self.transport = None
        handler = self._guard()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError):
            transport.resume_reading()
        if self.writing_paused:
            handler.pause_writing()
        handler.data_received(upgrade.head + upgrade.tail)
