"""gateway.http.expect_continue: the interim 100 answer, once, only when asked for, on HTTP/1.1."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

from gateway.http.expect_continue import send_continue


async def _sent(version: tuple[int, int], expect: str | None, times: int = 1) -> bytes:
    """What a real socket receives after ``send_continue`` ran ``times`` on one request."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    headers = {"Expect": expect} if expect is not None else {}
    ctx = SimpleNamespace(
        request=SimpleNamespace(version=version, headers=headers, transport=transport), continue_sent=False
    )
    for _ in range(times):
        send_continue(ctx)  # type: ignore[arg-type]
    await asyncio.sleep(0)
    transport.close()
    theirs.setblocking(False)
    received = b""
    while True:
        try:
            chunk = await loop.sock_recv(theirs, 1024)
        except (BlockingIOError, ConnectionError):
            break
        if not chunk:
            break
        received += chunk
    theirs.close()
    return received


async def test_sent_once_when_asked() -> None:
    assert await _sent((1, 1), "100-Continue", times=2) == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_not_sent_unasked_or_to_http_1_0() -> None:
    assert await _sent((1, 1), None) == b""
    assert await _sent((1, 0), "100-continue") == b""
