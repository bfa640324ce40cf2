"""The public listener as the lean HTTP/1.1 server (``listen.server: lean``): its start and its
drain, the mixin ``LeanListener`` of ``process.GatewayProcess``. The listener itself:
``gateway.http1``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from gateway.config_model import GatewayConfig
from gateway.http1.handler import LeanPublicHandler
from gateway.http1.server import LeanServer
from gateway.listener import CUT_GRACE, GuardedServer
from gateway.runtime import Runtime


class LeanListener:
    """The lean listener's methods of ``GatewayProcess``; its state is declared here for the type
    checker."""

    _lean: tuple[LeanServer, GuardedServer, asyncio.Server] | None
    _runtime: Runtime
    public_port: int | None
    runtime: Callable[[], Runtime]

    async def _start_lean(
        self,
        guarded: GuardedServer,
        config: GatewayConfig,
        ssl_context: ssl.SSLContext | None,
        *,
        reuse_port: bool,
    ) -> None:
        """The lean HTTP/1.1 listener; ``guarded`` (never listening itself) takes the connections
        handed to aiohttp (WebSocket, CONNECT) and shares its counters and its drain."""
        limits = config.listen.limits
        lean = LeanServer(
            LeanPublicHandler(self.runtime),
            guarded,
            keepalive_timeout=limits.keepalive_timeout,
            # The same last-resort parser limits as aiohttp's (above the gateway's own, App. B).
            max_line_size=max(16384, limits.max_header_bytes + 1024),
            max_field_size=max(limits.max_header_bytes, limits.max_header_line) + 1024,
            max_headers=limits.max_headers + 16,
        )
        server = await asyncio.get_running_loop().create_server(
            lean,
            config.listen.host,
            config.listen.port,
            reuse_port=reuse_port or None,
            backlog=1024,
            ssl=ssl_context,
        )
        self._lean = (lean, guarded, server)
        for sock in server.sockets:
            address = sock.getsockname()
            if isinstance(address, tuple):
                self.public_port = int(address[1])
                break

    async def _stop_lean(self) -> None:
        """One drain for the lean listener and the connections it handed to aiohttp (App. C)."""
        if self._lean is None:
            return
        lean, guarded, server = self._lean
        server.close()
        timeout = self._runtime.config.listen.drain_timeout
        await asyncio.gather(lean.shutdown(timeout, CUT_GRACE), guarded.shutdown(timeout))
