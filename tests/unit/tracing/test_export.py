"""The span recorder never fails a request: a broken context is logged once, not raised."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is part of .[test]")

from gateway.redaction.processor import Redactor
from gateway.tracing.export import SpanRecorder
from tests.support.gateway_proc import free_port


def test_a_failing_span_is_logged_once_and_never_raised() -> None:
    recorder = SpanRecorder(
        f"http://127.0.0.1:{free_port()}",
        redactor=Redactor(),
        pseudonymize=True,
        scheme="http",
        server_port=8443,
        instance="i-1",
        version="0.1.0",
    )
    broken = SimpleNamespace(started=0.0, trace=("", "", "", None, None))  # not a real context
    with capture_logs() as logs:
        recorder.record(broken, 200)  # type: ignore[arg-type]
        recorder.record(broken, 200)  # type: ignore[arg-type]
    assert [entry["event"] for entry in logs] == ["span_export_failed"]
    assert logs[0]["error"] == "ValueError"
