"""SPEC Appendix C, "Streams end with the session": an open WebSocket or streaming response is
closed within 1 s when its token's session is revoked (user or tenant) and at the token's
``exp`` — not at ``exp + auth.leeway``; a stream opened inside the leeway ends when the leeway
runs out. One real gateway (local state) in front of a real upstream; grants: test_grants.py."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from gateway.demo.issuer import DemoIssuer
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc, running_gateway
from tests.support.tenancy import ISS, issuer_config, token
from tests.support.upstream import Upstream

LEEWAY = 3  # seconds: long enough to tell a close at exp from one at exp + leeway
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def issuer() -> DemoIssuer:
    return DemoIssuer(issuer=ISS)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, issuer: DemoIssuer) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("session-streams")
    upstream = Upstream().start()
    config = {
        "auth": {**issuer_config(str(issuer.write_jwks(tmp / "idp.jwks.json"))), "leeway": f"{LEEWAY}s"},
        "upstreams": {"app": {"urls": [upstream.url], "read_timeout": "30s"}},
        "routes": [
            {"name": "app", "prefix": "/", "upstream": "app", "mfa": False},
            {"name": "public", "prefix": "/public", "upstream": "app", "auth": "none"},
        ],
        "killswitch": {"resync": "60s"},  # only the revocation's own propagation can be in time
    }
    with running_gateway(tmp, config, upstream) as proc:
        yield proc


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def exp_of(jwt: str) -> int:
    payload = jwt.split(".")[1]
    return int(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])


async def open_socket(http: aiohttp.ClientSession, gw: GatewayProc, tok: str | None) -> Any:
    headers = bearer(tok) if tok is not None else {}
    socket = await http.ws_connect(f"{gw.url}{'/ws' if tok else '/public/ws'}", headers=headers)
    await socket.send_str("hi")
    assert (await socket.receive(timeout=5)).data == "echo:hi"
    return socket


async def closed_for_policy(socket: aiohttp.ClientWebSocketResponse, timeout: float) -> float:
    """Wall-clock time at which the gateway closed ``socket`` with 1008 (policy violation)."""
    message = await socket.receive(timeout=timeout)
    assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 1008), message
    return time.time()


async def still_open(socket: aiohttp.ClientWebSocketResponse) -> bool:
    await socket.send_str("ping")
    return (await socket.receive(timeout=5)).data == "echo:ping"


async def revoke(http: aiohttp.ClientSession, gw: GatewayProc, **body: str) -> None:
    async with http.post(f"{gw.admin_url}/admin/sessions/revoke", headers=ADMIN, json=body) as r:
        assert r.status == 200, await r.text()


async def test_revoking_a_users_sessions_closes_their_websocket_within_a_second(
    gw: GatewayProc, issuer: DemoIssuer
) -> None:
    async with aiohttp.ClientSession() as http:
        alice = await open_socket(http, gw, token(issuer, "alice", "acme"))
        bob = await open_socket(http, gw, token(issuer, "bob", "acme"))
        public = await open_socket(http, gw, None)  # auth: none - no session to end
        started = time.time()
        await revoke(http, gw, tenant="acme", user="alice")
        closed = await closed_for_policy(alice, 1.0)
        print(f"alice's socket closed {closed - started:.3f}s after the revoke call began")
        assert closed - started < 1.0
        assert await still_open(bob)  # another user of the same tenant keeps theirs
        assert await still_open(public)
        for socket in (bob, public):
            await socket.close()


async def test_revoking_a_tenant_cuts_a_streaming_download_within_a_second(
    gw: GatewayProc, issuer: DemoIssuer
) -> None:
    total = 2 * 1024**3
    cut = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError)
    download = f"{gw.url}/stream?bytes={total}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(download, headers=bearer(token(issuer, "carol", "globex"))) as r,
    ):
        assert r.status == 200
        received = len(await r.content.readexactly(64 * 1024))
        started = time.monotonic()
        await revoke(http, gw, tenant="globex")
        with pytest.raises(cut):
            while chunk := await r.content.read(1024 * 1024):
                received += len(chunk)
                assert time.monotonic() - started < 1.0, "still streaming 1 s after the revocation"
    assert received < total


async def test_a_websocket_closes_at_its_tokens_exp_not_after_the_leeway(
    gw: GatewayProc, issuer: DemoIssuer
) -> None:
    tok = token(issuer, "dave", "initech", ttl=2)
    exp = exp_of(tok)
    async with aiohttp.ClientSession() as http:
        socket = await open_socket(http, gw, tok)
        closed = await closed_for_policy(socket, exp - time.time() + 1.0)
    print(f"closed {closed - exp:+.3f}s from exp (leeway {LEEWAY}s)")
    assert exp - 0.01 <= closed < exp + 1.0


async def test_a_websocket_opened_inside_the_leeway_closes_when_the_leeway_ends(
    gw: GatewayProc, issuer: DemoIssuer
) -> None:
    tok = token(issuer, "erin", "umbrella", ttl=-1)  # expired a second ago: accepted by the leeway
    ends = exp_of(tok) + LEEWAY
    async with aiohttp.ClientSession() as http:
        socket = await open_socket(http, gw, tok)  # not closed at once
        assert await still_open(socket)
        closed = await closed_for_policy(socket, ends - time.time() + 1.0)
    assert ends - 0.01 <= closed < ends + 1.0
