"""The lean listener's protocol factory (``asyncio.Server`` calls it once per connection): the
connection cap shared with the guarded aiohttp server, the last-resort parser limits, and the
one drain of the listener's connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http1.protocol import LeanProtocol, RequestHandler
from gateway.listener import drain

if TYPE_CHECKING:
    from gateway.listener import GuardedServer


class LeanServer:
    """The protocol factory of the public listener; counters live on the guarded aiohttp server
    it hands upgrades to, so both kinds of connection share one cap and one set of figures."""

    def __init__(
        self,
        handler: RequestHandler,
        guarded: GuardedServer,
        *,
        keepalive_timeout: float,
        max_line_size: int,
        max_field_size: int,
        max_headers: int,
    ) -> None:
        self.handler = handler
        self.guarded = guarded
        self.keepalive_timeout = keepalive_timeout
        self.max_line_size = max_line_size
        self.max_field_size = max_field_size
        # A head (or a trailer section) past this is refused while it still grows: more than any
        # head the gateway's own header limits would let through.
        self.max_unframed = max_line_size + max_field_size
        self.max_headers = max_headers
        self.connections: set[LeanProtocol] = set()
        self.closing = False

    def __call__(self) -> LeanProtocol:
        return LeanProtocol(self)

    async def shutdown(self, timeout: float, cut_grace: float) -> None:
        """One drain (App. C): idle connections close now, busy ones after their answer; what is
        still running after ``timeout`` is cut and logged 499 ``drain-timeout``."""
        self.closing = True
        for connection in list(self.connections):
            connection.close_when_idle()
        await drain(list(self.connections), timeout, cut_grace)
        for connection in list(self.connections):
            connection.abort()
