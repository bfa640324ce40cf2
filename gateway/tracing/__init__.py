"""W3C trace context on every request, and the optional OTLP span export (SPEC Appendix C).

``context``: the ids (kept from a trusted peer, otherwise new) — on the hot path, stdlib only.
``model`` / ``schema``: the ``observability`` config section. ``export``: one span per request
over OTLP/HTTP, imported only when ``observability.otlp_endpoint`` is set (the ``otel`` extra).
"""

from __future__ import annotations

import sys


def flush_exported_spans() -> None:
    """Send the spans still batched, at shutdown (a forked worker exits through ``os._exit``:
    no atexit hook of the SDK runs). Nothing when export was never on: then the exporter module,
    and opentelemetry with it, was never imported."""
    export = sys.modules.get("gateway.tracing.export")
    if export is not None:
        export.flush_spans()
