"""Issue 13 "cheap refusals": the lean listener writes a refusal from pre-rendered bytes; on the
wire it must be exactly what the general renderer gives — the same status, headers and body as
aiohttp's listener (an independent writer of ``render_problem``'s response), with framing right
for every request id length, HEAD, HTTP/1.0 and keep-alive, and every refusal counted."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.ratelimit_support import limits_config, ready
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc
from tests.support.raw_http import ResponseReader, connect
from tests.support.upstream import Upstream

_VARYING = {"date", "x-request-id", "content-length", "connection", "keep-alive"}
_LONG_ID = "i" * 64  # the longest client id kept (SPEC §3)


def _flood_config(upstream: Upstream, tmp: Path, server: str) -> dict[str, Any]:
    config = limits_config(
        upstream.url,
        tmp,
        {"pre_auth": [{"key": "ip", "limit": "1/minute", "strategy": "fixed-window"}]},
        [{"name": "open", "prefix": "/", "auth": "none"}],
    )
    config["listen"] = {"server": server}
    return config


def _get(rid: str | None = None, method: str = "GET", version: str = "1.1", extra: str = "") -> bytes:
    own = f"X-Request-ID: {rid}\r\n" if rid is not None else ""
    return f"{method} /x HTTP/{version}\r\nHost: gw\r\n{own}{extra}\r\n".encode()


def _raw_head(sock: socket.socket) -> list[tuple[str, str]]:
    """The head's fields in wire order (names as sent), for the order and count checks."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        assert chunk, "connection closed before a head"
        data += chunk
    lines = data.decode("latin-1").split("\r\n")[1:-2]
    return [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]


def _refused(gw: GatewayProc, rid: str | None) -> tuple[str, dict[str, str], bytes]:
    with connect(gw.port) as sock:
        sock.sendall(_get(rid))
        status, headers, body = ResponseReader(sock).read()
    assert status.startswith("HTTP/1.1 429 "), status
    return status, headers, body


async def test_lean_refusals_are_the_general_renderers_bytes_for_every_id_length(
    tmp_path: Path, upstream: Upstream, gateway_factory, http: aiohttp.ClientSession
) -> None:
    lean = ready(gateway_factory(_flood_config(upstream, tmp_path / "lean", "lean")))
    general = ready(gateway_factory(_flood_config(upstream, tmp_path / "aiohttp", "aiohttp")))
    for gw in (lean, general):
        with connect(gw.port) as sock:
            sock.sendall(_get())
            assert ResponseReader(sock).read()[0].startswith("HTTP/1.1 200 ")

    answers = {}
    for name, gw in (("lean", lean), ("aiohttp", general)):
        answers[name] = [_refused(gw, rid) for rid in (None, "a", _LONG_ID, "b", None)]
    for (l_status, l_headers, l_body), (a_status, a_headers, a_body) in zip(
        answers["lean"], answers["aiohttp"], strict=True
    ):
        assert l_status == a_status == "HTTP/1.1 429 Too Many Requests"
        assert {k: v for k, v in l_headers.items() if k not in _VARYING} == {
            k: v for k, v in a_headers.items() if k not in _VARYING
        }
        assert int(l_headers["content-length"]) == len(l_body)
        lean_problem, general_problem = json.loads(l_body), json.loads(a_body)
        assert lean_problem.pop("request_id") == l_headers["x-request-id"]
        general_problem.pop("request_id")
        assert list(lean_problem.items()) == list(general_problem.items())  # fields and order
    ids = [headers["x-request-id"] for _, headers, _ in answers["lean"]]
    assert ids[1:4] == ["a", _LONG_ID, "b"] and len({ids[0], ids[4]}) == 2  # fresh ids differ
    assert json.loads(answers["lean"][0][2])["retry_after"] == int(answers["lean"][0][1]["retry-after"])

    # Every refusal counted, though only the first of a shape is rendered.
    async with http.get(f"{lean.admin_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert 'shopino_gateway_refusals_total{type="rate-limited"} 5.0' in await r.text()


def test_lean_refusal_framing_keep_alive_head_and_http10(
    tmp_path: Path, upstream: Upstream, gateway_factory
) -> None:
    gw = ready(gateway_factory(_flood_config(upstream, tmp_path, "lean")))
    with connect(gw.port) as sock:
        sock.sendall(_get())
        reader = ResponseReader(sock)
        assert reader.read()[0].startswith("HTTP/1.1 200 ")
        # Pipelined on one connection: a GET, a HEAD (no body, same length), a GET again.
        sock.sendall(_get("same-id") + _get("same-id", method="HEAD") + _get("same-id"))
        get_status, get_headers, get_body = reader.read()
        assert get_status.startswith("HTTP/1.1 429 ") and int(get_headers["content-length"]) == len(get_body)
        head_status, head_headers, _ = reader.read_head_only()
        assert head_status.startswith("HTTP/1.1 429 ")
        assert head_headers["content-length"] == get_headers["content-length"]
        again = reader.read()
        assert again[0].startswith("HTTP/1.1 429 ")  # nothing after the HEAD's head: in step
        assert again[2] == get_body and "connection" not in again[1]  # the connection stays usable

    with connect(gw.port) as sock:  # HTTP/1.0 asking for keep-alive gets it, said out loud
        sock.sendall(_get("v10", version="1.0", extra="Connection: keep-alive\r\n"))
        fields = _raw_head(sock)
        names = [name for name, _ in fields]
        assert len(names) == len({name.lower() for name in names})  # no field twice
        assert ("Connection", "keep-alive") in fields and names[-2:] == ["Date", "Connection"]
        assert names[:4] == ["Content-Type", "Cache-Control", "Retry-After", "X-Request-ID"]
        assert ("X-Request-ID", "v10") in fields and ("Server", "shopino-gateway") in fields
        assert ("X-Content-Type-Options", "nosniff") in fields

    with connect(gw.port) as sock:  # plain HTTP/1.0: answered, then closed
        sock.sendall(_get("v10b", version="1.0"))
        status, headers, body = ResponseReader(sock).read()
        assert status == "HTTP/1.0 429 Too Many Requests" and headers["connection"] == "close"
        assert json.loads(body)["request_id"] == "v10b"
        assert sock.recv(1) == b""
