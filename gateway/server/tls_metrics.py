"""The served certificates' expiry for Prometheus (``shopino_gateway_tls_certificate_not_after_seconds``),
so an alert fires days before a listener's certificate runs out (deploy/prometheus/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509

_gauge: Any = None


def record_certificate(listener: str, cert_file: Path) -> None:
    """Set the gauge from the first certificate of ``cert_file`` (the served leaf). The gauge is
    made on first use: with several workers prometheus-client must wait for its multiprocess dir."""
    global _gauge
    if _gauge is None:
        from prometheus_client import Gauge

        _gauge = Gauge(
            "shopino_gateway_tls_certificate_not_after_seconds",
            "Unix time at which the listener's served certificate expires",
            ("listener",),
            multiprocess_mode="livemin",
        )
    certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
    _gauge.labels(listener).set(certificate.not_valid_after_utc.timestamp())
