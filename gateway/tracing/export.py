"""One OTLP/HTTP span per request (SPEC Appendix C), with the opentelemetry SDK of the ``otel``
extra. Imported only when ``observability.otlp_endpoint`` is set: with export off, nothing of
opentelemetry is loaded and a request pays one ``is None`` test.

The span carries the request's own ids (``gateway.tracing.context``): the trace id in the
access line and the span id the upstream got as its parent are the ones exported, and a
trusted caller's span is its parent. Attributes follow the stable HTTP server semantic
conventions plus ``shopino.*``; they come from typed fields the gateway produced itself. The
path is the canonical one, through the access log's redactor; the query, tokens, users and
other PII never become attributes, and client IPs are truncated as in the access line.
Spans are batched and sent by the SDK's worker thread, never on the event loop.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import structlog
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from gateway.facts import RequestFacts
from gateway.redaction.processor import Redactor, truncate_ip
from gateway.tracing.context import PARENT_ID, SPAN_ID, TRACE_ID, TRACEPARENT
from gateway.tracing.schema import traces_url

log = structlog.get_logger("gateway.tracing")
SCHEDULE_DELAY_MS = 1000  # spans wait at most about a second for their batch
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"))
_MAX_HOST = 255


class _RequestIds(IdGenerator):
    """Hands the SDK the ids the request already has (set just before each span starts; the
    event loop runs one span start at a time)."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id


class _Exporter:
    """One tracer provider per process and endpoint, made on first use (after a worker forked,
    so each worker has its own batch thread); kept across reloads."""

    _lock = threading.Lock()
    _made: dict[str, tuple[TracerProvider, Any, _RequestIds]] = {}

    @classmethod
    def get(cls, url: str, instance: str, version: str) -> tuple[TracerProvider, Any, _RequestIds]:
        with cls._lock:
            made = cls._made.get(url)
            if made is None:
                ids = _RequestIds()
                resource = Resource.create(
                    {
                        "service.name": "shopino-gateway",
                        "service.version": version,
                        "service.instance.id": instance,
                    }
                )
                provider = TracerProvider(resource=resource, id_generator=ids)
                processor = BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=url), schedule_delay_millis=SCHEDULE_DELAY_MS
                )
                provider.add_span_processor(processor)
                made = cls._made[url] = (provider, provider.get_tracer("gateway.tracing", version), ids)
            return made


def _forget_after_fork() -> None:
    _Exporter._made = {}  # a child's provider is its own (the parent's thread is not inherited)


os.register_at_fork(after_in_child=_forget_after_fork)


class SpanRecorder:
    """Built once per runtime when export is on; ``record`` runs once per finished request."""

    def __init__(
        self,
        endpoint: str,
        *,
        redactor: Redactor,
        pseudonymize: bool,
        scheme: str,
        server_port: int,
        instance: str,
        version: str,
    ) -> None:
        self._url = traces_url(endpoint)
        self._redactor = redactor
        self._pseudonymize = pseudonymize
        self._scheme = scheme
        self._port = server_port
        self._instance = instance
        self._version = version
        self._routes: dict[str, str] = {}  # route prefix → http.route template
        self._warned = False

    def record(self, ctx: RequestFacts, status: int) -> None:
        """One span for a finished request. Never raises: telemetry must not fail a request."""
        try:
            self._record(ctx, status)
        except Exception as error:
            if not self._warned:
                self._warned = True  # once per runtime; the error's class only
                log.warning("span_export_failed", error=type(error).__name__)

    def _record(self, ctx: RequestFacts, status: int) -> None:
        end = time.time_ns()
        start = end - int((time.monotonic() - ctx.started) * 1e9)
        trace = ctx.trace
        _, tracer, ids = _Exporter.get(self._url, self._instance, self._version)
        ids.trace_id, ids.span_id = int(trace[TRACE_ID], 16), int(trace[SPAN_ID], 16)
        parent = None
        if trace[PARENT_ID] is not None:  # a trusted caller's span: this span's parent
            flags = TraceFlags(int(trace[TRACEPARENT][-2:], 16))
            caller = SpanContext(ids.trace_id, int(trace[PARENT_ID], 16), is_remote=True, trace_flags=flags)
            parent = otel_trace.set_span_in_context(NonRecordingSpan(caller))
        attributes, name = self._attributes(ctx, status)
        span = tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes, start_time=start
        )
        if status >= 500:  # server spans: only 5xx are errors (semantic conventions)
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)

    def _attributes(self, ctx: RequestFacts, status: int) -> tuple[dict[str, Any], str]:
        request = ctx.request
        method = request.method if request.method in KNOWN_METHODS else "_OTHER"
        major, minor = request.version
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "http.response.status_code": status,
            "url.scheme": self._scheme,
            "server.port": self._port,
            "network.protocol.name": "http",
            "network.protocol.version": f"{major}.{minor}",
            "shopino.ratelimit.decision": ctx.ratelimit or "ok",
        }
        host = request.host.rpartition(":")[0] if request.host.rpartition(":")[2].isdigit() else request.host
        if host:
            attributes["server.address"] = self._redactor.redact_text(host[:_MAX_HOST])
        if ctx.target is not None:
            # SECURITY: the canonical path only, redacted like the access line; never the query.
            attributes["url.path"] = self._redactor.redact_text(ctx.target.path)
        client = truncate_ip(ctx.client_ip) if self._pseudonymize else ctx.client_ip
        if client:
            attributes["client.address"] = client
        name = method
        route = ctx.route
        if route is not None:
            template = self._routes.get(route.prefix)
            if template is None:
                template = self._routes[route.prefix] = route.prefix.rstrip("/") + "/*"
            attributes["http.route"] = template
            attributes["shopino.route"] = route.name
            name = f"{method} {template}"
        if ctx.tenant is not None:
            attributes["shopino.tenant"] = self._redactor.redact_text(ctx.tenant)
        if ctx.killswitch_id is not None:
            attributes["shopino.killswitch.id"] = ctx.killswitch_id
        if status >= 500:
            attributes["error.type"] = ctx.refusal or str(status)
        return attributes, name


def flush_spans(timeout_ms: int = 5000) -> None:
    """Send every batched span now (tests, and a graceful stop)."""
    for provider, _, _ in list(_Exporter._made.values()):
        provider.force_flush(timeout_ms)
