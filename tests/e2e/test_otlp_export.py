"""OTLP span export (SPEC Appendix C) from a real gateway to a real OTLP/HTTP receiver on
loopback (an aiohttp server decoding the protobuf with opentelemetry-proto): one span per
request with the HTTP server semantic conventions and the ``shopino.*`` attributes, the same
ids as the forwarded traceparent and the access line, and never a token, query or PII value."""

from __future__ import annotations

import asyncio
import gzip
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.conftest import standard_config
from tests.e2e.killswitch_helpers import engaged
from tests.support.gateway_proc import free_port
from tests.support.upstream import Upstream

pytest.importorskip("opentelemetry.proto", reason="the otel extra is part of .[test]")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01\Z")
SECRET_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2VjcmV0LXNpZ25hdHVyZQ"
EMAIL = "alice.private@example.com"


class Receiver:
    """POST /v1/traces: every span received, as (resource attributes, span) pairs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.raw: list[bytes] = []

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.raw.append(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((resource, span) for span in scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def wait_for(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.spans) < count:
            assert time.monotonic() < deadline, f"{len(self.spans)} of {count} spans arrived"
            await asyncio.sleep(0.05)


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        out[pair.key] = getattr(pair.value, kind) if kind else None
    return out


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    created = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", created.traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", created.port).start()
    yield created
    await runner.cleanup()


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> int:
    async with http.get(url, headers=headers or {}) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize("server", ["lean", "aiohttp"])
async def test_one_span_per_request_with_semantic_conventions_and_no_secrets(
    server: str,
    tmp_path: Path,
    upstream: Upstream,
    receiver: Receiver,
    gateway_factory,
    http: aiohttp.ClientSession,
) -> None:
    config = standard_config(upstream.url, server=server)
    config["trusted_proxies"] = ["127.0.0.1/32"]
    config["routes"].insert(0, {"name": "frozen", "prefix": "/frozen", "upstream": "app", "auth": "none"})
    config["observability"] = {"otlp_endpoint": f"http://127.0.0.1:{receiver.port}"}
    gw = gateway_factory(config)
    proxied = f"/orders/{EMAIL}?access_token={SECRET_TOKEN}&email={EMAIL}"
    assert await _get(http, f"{gw.url}{proxied}", {"traceparent": INCOMING}) == 200
    assert await _get(http, f"{gw.url}/api/x", {"Authorization": f"Bearer {SECRET_TOKEN}"}) == 401
    async with engaged(http, gw, scope="route", target="frozen", incident="INC-9") as switch:
        assert await _get(http, f"{gw.url}/frozen/a") == 503
    # Stopped at once: the spans still batched are sent on the way out, none is lost. (In a
    # thread: the receiver answers on this event loop meanwhile.)
    assert await asyncio.to_thread(gw.stop) == 0
    await receiver.wait_for(3)
    # The three requests' spans, and those of the start-up health probes (one span each too).
    paths = [span_attrs(span).get("url.path", "") for _, span in receiver.spans]
    assert len([p for p in paths if not p.startswith("/_gateway/")]) == 3, paths

    by_path = {span_attrs(span)["url.path"]: (resource, span) for resource, span in receiver.spans}
    resource, span = _one(by_path, "/orders/")  # the e-mail in the path is redacted
    attrs = span_attrs(span)
    assert resource["service.name"] == "shopino-gateway"
    assert span.kind == span.SpanKind.SPAN_KIND_SERVER
    assert span.name == "GET /*"
    assert attrs["http.request.method"] == "GET" and attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "/*" and attrs["shopino.route"] == "open"
    assert attrs["url.scheme"] == "http" and attrs["network.protocol.version"] == "1.1"
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == gw.port
    assert attrs["shopino.ratelimit.decision"] == "ok"
    # The span is the one the upstream saw as its parent, in the trusted caller's trace.
    forwarded = next(r for r in upstream.requests if r["path_qs"].startswith("/orders/"))
    traceparent = dict((k.lower(), v) for k, v in forwarded["headers"])["traceparent"]
    match = TRACEPARENT.match(traceparent)
    assert match is not None
    assert span.trace_id.hex() == match.group(1) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span.span_id.hex() == match.group(2) and span.parent_span_id.hex() == "00f067aa0ba902b7"
    assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
    lines = {line["path"].split("?")[0]: line for line in gw.access_lines()}
    assert any(line["trace_id"] == span.trace_id.hex() for line in lines.values())

    _, refused = _one(by_path, "/api/x")
    refused_attrs = span_attrs(refused)
    assert refused_attrs["http.response.status_code"] == 401 and refused_attrs["shopino.route"] == "api"
    assert refused.parent_span_id == b""  # no traceparent sent: a new trace starts here

    _, isolated = _one(by_path, "/frozen/a")
    isolated_attrs = span_attrs(isolated)
    assert isolated_attrs["shopino.killswitch.id"] == switch["id"]
    assert isolated_attrs["http.response.status_code"] == 503 and isolated_attrs["error.type"] == "isolated"
    assert isolated.status.code == isolated.status.StatusCode.STATUS_CODE_ERROR

    # SECURITY: no token, query string or PII value in anything exported.
    everything = b"".join(receiver.raw)
    for secret in (SECRET_TOKEN, EMAIL, "access_token", "Bearer"):
        assert secret.encode() not in everything, secret
    assert "url.query" not in attrs and "url.full" not in attrs


def span_attrs(span: Any) -> dict[str, Any]:
    return _attributes(span.attributes)


def _one(by_path: dict[str, tuple[dict[str, Any], Any]], prefix: str) -> tuple[dict[str, Any], Any]:
    found = [value for path, value in by_path.items() if path.startswith(prefix)]
    assert len(found) == 1, (prefix, sorted(by_path))
    return found[0]


def test_without_an_endpoint_the_exporter_is_never_imported() -> None:
    """Off by default and free: the serving path and the runtime's span recorder load nothing of
    the tracing SDK or the exporter. (redis-py >= 8 itself imports ``opentelemetry.sdk.metrics``
    for its own optional metrics whenever the package is installed; that is not the gateway's.)"""
    code = (
        "import sys\n"
        "import gateway.cli.commands, gateway.app, gateway.http1.handler, gateway.proxy\n"
        "from gateway.config_schema import parse_config\n"
        "from gateway.runtime import GatewayStatus, _span_recorder\n"
        "config = parse_config(open('config/gateway.yaml').read())\n"
        "assert config.observability.otlp_endpoint is None\n"
        "assert _span_recorder(config, GatewayStatus('i', 'local'), False) is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(\n"
        "    ('gateway.tracing.export', 'opentelemetry.sdk.trace', 'opentelemetry.exporter')))\n"
        "assert not loaded, loaded\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
