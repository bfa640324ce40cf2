"""deploy/haproxy.cfg in front of a real gateway: TLS passes through untouched (the client sees
the gateway's own certificate), the readiness check over TLS brings the gateway into rotation,
and every connection reaches it although the other server of the backend is dead. Only what
Docker provides is swapped for loopback: server addresses and listening ports (the Docker DNS
resolver is dropped)."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.server.tls import self_signed_certificate
from tests.support.gateway_proc import GatewayProc, free_port, insecure_client_context
from tests.support.upstream import Upstream

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def loopback_config(gateway_port: int, dead_port: int, public: int, health: int) -> str:
    text = (DEPLOY / "haproxy.cfg").read_text()
    text = re.sub(r"(?ms)^resolvers docker\n.*?\n\n", "", text)
    text = text.replace(" resolvers docker init-addr last,libc,none", "")
    text = text.replace("gateway-1:8443", f"127.0.0.1:{gateway_port}")
    text = text.replace("gateway-2:8443", f"127.0.0.1:{dead_port}")
    text = text.replace("bind :8443", f"bind 127.0.0.1:{public}").replace(
        "bind :8404", f"bind 127.0.0.1:{health}"
    )
    assert f"127.0.0.1:{gateway_port}" in text and "resolvers" not in text
    return text


def served_certificate(port: int) -> bytes:
    context = insecure_client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_haproxy_passes_tls_through_to_ready_gateways(tmp_path: Path, upstream: Upstream) -> None:
    cert, key = self_signed_certificate(tmp_path / "tls")
    (tmp_path / "gw").mkdir()
    gateway = GatewayProc(
        tmp_path / "gw",
        {
            "listen": {"tls": {"cert": str(cert), "key": str(key)}},
            "upstreams": {"app": {"urls": [upstream.url]}},
            "routes": [{"name": "open", "prefix": "/", "upstream": "app", "auth": "none"}],
        },
    ).start()
    public, health, dead = free_port(), free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(loopback_config(gateway.port, dead, public, health))
    log = (tmp_path / "haproxy.log").open("wb")
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:  # in rotation once two readiness checks passed (rise 2, inter 2s)
            try:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{public}/_gateway/ready", timeout=2, context=insecure_client_context()
                ) as answer:
                    assert answer.status == 200
                break
            except (OSError, ssl.SSLError):
                alive = proxy.poll() is None and time.monotonic() < deadline
                assert alive, (tmp_path / "haproxy.log").read_text() + gateway.logs()
                time.sleep(0.2)
        # L4: the certificate the client sees is the gateway's own, not the proxy's.
        expected = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
        assert served_certificate(public) == expected
        # Every connection is served: the dead server is checked out, or redispatched from.
        for _ in range(5):
            with urllib.request.urlopen(
                f"https://127.0.0.1:{public}/_gateway/health", timeout=2, context=insecure_client_context()
            ) as answer:
                assert answer.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as answer:
            assert answer.status == 200
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        log.close()
        gateway.stop()
