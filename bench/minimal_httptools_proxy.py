"""The leanest HTTP/1.1 proxy CPython can run: the floor under any Python gateway.

uvloop and httptools both ways, one kept-alive upstream connection per client connection, and
nothing else: each request's bytes are forwarded as they came once httptools has found the
message's end, each response's bytes likewise. No header is read, rebuilt, added or removed,
nothing is checked or logged. It is NOT a usable proxy (no Host rewrite, no hop-by-hop
removal, no limits, no pipelining); it shows what the event loop, the system calls and two
httptools parsers cost per request in this interpreter, so that a per-request budget can be
judged against what is left for the actual work (issue 13's closing figures).
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """One kept-alive connection to the upstream, carrying one client connection's requests."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.pieces: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        answer = b"".join(self.pieces)
        self.pieces.clear()
        self.client.answer(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.parser = httptools.HttpRequestParser(self)
        self.pieces: list[bytes] = []
        self.waiting: deque[bytes] = deque()  # requests complete before the upstream connected
        self.upstream: Upstream | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        self.upstream = upstream
        while self.waiting:
            upstream.transport.write(self.waiting.popleft())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        request = b"".join(self.pieces)
        self.pieces.clear()
        if self.upstream is None or self.upstream.transport is None:
            self.waiting.append(request)
        else:
            self.upstream.transport.write(request)

    def answer(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(port: int, upstream_host: str, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream_host, upstream_port), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, "127.0.0.1", args.upstream_port))


if __name__ == "__main__":
    main()
