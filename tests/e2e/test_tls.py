"""SPEC §15: TLS 1.3 by default, TLS 1.2 refused unless configured; HSTS on TLS listeners."""

from __future__ import annotations

import socket
import ssl

import aiohttp
import pytest

from tests.support.upstream import Upstream


def handshake(port: int, version: ssl.TLSVersion) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = version
    context.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        return str(tls.version())


async def test_tls13_only_by_default(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(
        {
            "listen": {"tls": "self-signed"},
            "upstreams": {"app": {"urls": [upstream.url]}},
            "routes": [{"name": "open", "prefix": "/", "upstream": "app", "auth": "none"}],
        }
    )
    assert handshake(gw.port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(gw.port, ssl.TLSVersion.TLSv1_2)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/echo", ssl=context) as response:
        assert response.status == 200
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        record = await response.json()
    assert ["X-Forwarded-Proto", "https"] in record["headers"]


async def test_tls12_when_configured_uses_forward_secret_aead(
    gateway_factory, upstream: Upstream, tmp_path
) -> None:
    from gateway.server.tls import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path / "certs")
    gw = gateway_factory(
        {
            "listen": {"tls": {"cert": str(cert), "key": str(key), "min_version": "1.2"}},
            "upstreams": {"app": {"urls": [upstream.url]}},
            "routes": [{"name": "open", "prefix": "/", "upstream": "app", "auth": "none"}],
        }
    )
    assert handshake(gw.port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    # A client offering only CBC suites (no AEAD, no forward secrecy) is refused.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("AES128-SHA:AES256-SHA")
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
        context.wrap_socket(raw)
