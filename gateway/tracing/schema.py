"""The ``observability`` section builder (called by ``gateway.config_schema``)."""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from gateway.config.reader import Node
from gateway.tracing.model import ObservabilityConfig

TRACES_PATH = "/v1/traces"
# What the export needs from the ``otel`` extra: checked when (and only when) an endpoint is set.
OTEL_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
EXTRA_HINT = "needs the otel extra: pip install 'shopino-gateway[otel]'"


def traces_url(endpoint: str) -> str:
    """A bare ``http://collector:4318`` gets OTLP's ``/v1/traces``; a URL with a path is used as is
    (the OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT convention)."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + TRACES_PATH
    return endpoint


def _endpoint_error(endpoint: str) -> str | None:
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "expected an http(s) URL like http://127.0.0.1:4318"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http(s) URL like http://127.0.0.1:4318"
    if parts.username or parts.password or parts.query or parts.fragment:
        # SECURITY: credentials in the URL would be printed with the config and logged by drivers.
        return "no credentials, query or fragment in the URL"
    return None


def otel_missing() -> bool:
    try:
        for name in OTEL_MODULES:
            importlib.import_module(name)
    except ImportError:
        return True
    return False


def build_observability(node: Node) -> ObservabilityConfig:
    endpoint = node.string("otlp_endpoint", None)
    if endpoint is not None:
        where = node.child_path("otlp_endpoint")
        if (problem := _endpoint_error(endpoint)) is not None:
            node.report.error(where, problem)
        elif otel_missing():
            node.report.error(where, EXTRA_HINT)
    node.done()
    return ObservabilityConfig(otlp_endpoint=endpoint)
