"""A real HTTP upstream on loopback, run in its own thread and event loop.

Endpoints: ``/echo`` (what arrived), ``/stream?bytes=N`` (generated download),
``/sink`` (streamed upload → size and sha256), ``/slow?seconds=S``, ``/ws`` and ``…/ws`` (WebSocket
echo, also under a tenant prefix such as ``/t/acme/ws``),
``/leaky`` (answers with Server/X-Powered-By/hop-by-hop headers), ``POST /login`` (JSON or form
``username``/``password`` checked against ``accounts``: 200 or 401; every attempt is counted),
``/cached?value=V`` (answers with ``Cache-Control: V``). ``open_connections()`` counts the
connections the upstream holds open right now, ``sleeping`` the ``/slow`` requests it holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

from aiohttp import WSMsgType, web

from tests.support.gateway_proc import free_port

CHUNK = 64 * 1024


class Upstream:
    def __init__(self, name: str = "up") -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[dict[str, Any]] = []
        self.accounts: dict[str, str] = {}  # username → password for POST /login
        self.login_attempts: list[tuple[str, bool]] = []  # (username, succeeded)
        # /slow requests being slept on now: a test knows its request is in flight, not guesses.
        self.sleeping = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/{prefix:.+}/ws", self.ws)
        app.router.add_route("*", "/sink", self.sink)
        app.router.add_get("/stream", self.stream)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/leaky", self.leaky)
        app.router.add_post("/login", self.login)
        app.router.add_get("/cached", self.cached)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = {
            "upstream": self.name,
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_length": len(body),
        }
        self.requests.append(record)
        return web.json_response(record)

    async def sink(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"bytes": size, "sha256": digest.hexdigest()})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        total = int(request.query.get("bytes", "0"))
        response = web.StreamResponse()
        response.content_length = total
        await response.prepare(request)
        block = b"s" * CHUNK
        sent = 0
        while sent < total:
            piece = block[: min(CHUNK, total - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        self.sleeping += 1
        try:
            await asyncio.sleep(float(request.query.get("seconds", "1")))
        finally:
            self.sleeping -= 1
        return web.json_response({"slept": True, "upstream": self.name})

    async def leaky(self, request: web.Request) -> web.Response:
        return web.Response(
            text="ok",
            headers={
                "Server": "Apache/2.4.1",
                "X-Powered-By": "PHP/5.4",
                "Keep-Alive": "timeout=5",
                "Connection": "X-Internal",
                "X-Internal": "secret-topology",
            },
        )

    async def cached(self, request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Cache-Control": request.query.get("value", "no-cache")})

    async def login(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            data = await request.json()
        else:
            data = dict(await request.post())
        username, password = str(data.get("username", "")), str(data.get("password", ""))
        ok = username in self.accounts and self.accounts[username] == password
        self.login_attempts.append((username, ok))
        if ok:
            return web.json_response({"token": f"session-{username}"})
        return web.json_response({"error": "invalid credentials"}, status=401)

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(protocols=("chat",))
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(f"echo:{message.data}")
            elif message.type == WSMsgType.BINARY:
                await socket.send_bytes(message.data)
        return socket

    async def _start(self) -> None:
        # Header fields up to 16 KiB (aiohttp's default is 8 KiB): tests probe the gateway's limits.
        self._runner = web.AppRunner(self._app(), access_log=None, max_field_size=16384)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def open_connections(self) -> int:
        """Connections from clients (the gateway) this upstream holds open now."""

        async def count() -> int:
            server = self._runner.server if self._runner is not None else None
            return len(server.connections) if server is not None else 0

        return asyncio.run_coroutine_threadsafe(count(), self._loop).result(5)

    def start(self) -> Upstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
