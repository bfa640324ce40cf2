"""W3C trace context through real gateways, on both listeners (SPEC Appendix C): an untrusted
client's traceparent is replaced, a trusted peer's is continued with the gateway's own span as
the upstream's parent, an invalid one is replaced; the trace id is in the access line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import standard_config
from tests.support.upstream import Upstream

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
INCOMING_TRACE, INCOMING_PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")


def _forwarded(upstream: Upstream, path: str) -> dict[str, list[str]]:
    """The headers the upstream got for ``path`` (lower-case names, every value)."""
    record = next(r for r in upstream.requests if r["path_qs"] == path)
    headers: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, Any]) -> int:
    async with http.get(url, headers=headers) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize("server", ["lean", "aiohttp"])
async def test_an_untrusted_clients_trace_is_replaced_and_logged(
    server: str, tmp_path: Path, upstream: Upstream, gateway_factory, http: aiohttp.ClientSession
) -> None:
    gw = gateway_factory(standard_config(upstream.url, server=server))
    sent = {"traceparent": INCOMING, "tracestate": "evil=1"}
    assert await _get(http, f"{gw.url}/untrusted", sent) == 200
    assert await _get(http, f"{gw.url}/none", {}) == 200
    got = _forwarded(upstream, "/untrusted")
    assert len(got["traceparent"]) == 1 and "tracestate" not in got  # the client's never pass
    match = TRACEPARENT.match(got["traceparent"][0])
    assert match is not None
    trace_id, span_id, flags = match.groups()
    # SECURITY: a client cannot join (or pick) a trace: the id is new, the parent is our span.
    assert trace_id != INCOMING_TRACE and span_id != INCOMING_PARENT and flags == "01"
    other = TRACEPARENT.match(_forwarded(upstream, "/none")["traceparent"][0])
    assert other is not None and other.group(1) != trace_id  # a new trace per request
    lines = {line["path"]: line for line in gw.access_lines(paths=("/untrusted", "/none"))}
    assert lines["/untrusted"]["trace_id"] == trace_id
    assert lines["/none"]["trace_id"] == other.group(1)


@pytest.mark.parametrize("server", ["lean", "aiohttp"])
async def test_a_trusted_peers_trace_is_continued_and_an_invalid_one_replaced(
    server: str, tmp_path: Path, upstream: Upstream, gateway_factory, http: aiohttp.ClientSession
) -> None:
    config = standard_config(upstream.url, server=server)
    config["trusted_proxies"] = ["127.0.0.1/32", "::1/128"]
    gw = gateway_factory(config)
    sent = {"traceparent": INCOMING, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"}
    assert await _get(http, f"{gw.url}/trusted", sent) == 200
    got = _forwarded(upstream, "/trusted")
    match = TRACEPARENT.match(got["traceparent"][0])
    assert match is not None
    assert match.group(1) == INCOMING_TRACE and match.group(3) == "01"
    span_id = match.group(2)
    assert span_id != INCOMING_PARENT  # the upstream's parent is the gateway's own span
    assert got["tracestate"] == ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]

    for path, bad in [
        ("/upper", INCOMING.upper()),
        ("/zero", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ("/version", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ]:
        assert await _get(http, f"{gw.url}{path}", {"traceparent": bad, "tracestate": "a=1"}) == 200
        replaced = _forwarded(upstream, path)
        fresh = TRACEPARENT.match(replaced["traceparent"][0])
        assert fresh is not None and fresh.group(1) not in (INCOMING_TRACE, "0" * 32), path
        assert "tracestate" not in replaced, path  # dropped with its invalid traceparent

    lines = {line["path"]: line for line in gw.access_lines(paths=("/trusted", "/zero"))}
    assert lines["/trusted"]["trace_id"] == INCOMING_TRACE
    assert lines["/zero"]["trace_id"] != "0" * 32
