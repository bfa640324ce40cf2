"""SPEC §10 webhooks through the real CLI: WooCommerce signatures over the raw body, forwarded
byte for byte; forgeries refused before the ERP; `integrations rotate` with a grace period."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import aiohttp

from tests.support.gateway_proc import GatewayProc
from tests.support.upstream import Upstream

SECRET = "wc-secret-for-tests-0123456789"


def signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


async def test_woocommerce_webhooks_and_rotation(gateway_factory, upstream: Upstream) -> None:
    gw: GatewayProc = gateway_factory(
        {
            "integrations": {
                "woo": {"scheme": "woocommerce", "secret": "${WC_SECRET}", "rotation_grace": "1h"}
            },
            "upstreams": {"app": {"urls": [upstream.url]}},
            "routes": [
                {
                    "name": "woo",
                    "prefix": "/webhooks/woocommerce",
                    "upstream": "app",
                    "auth": "webhook",
                    "integration": "woo",
                    "max_body": "4KiB",
                },
            ],
        },
        env={"WC_SECRET": SECRET},
    )
    url = f"{gw.url}/webhooks/woocommerce/order"
    # Odd spacing and key order on purpose: the signature is over these exact bytes.
    body = b'{"id": 42,  "total":"1999.00", "billing":{"email":"ayesha@example.pk"}}'
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, data=body, headers={"X-WC-Webhook-Signature": signature(SECRET, body)}
        ) as r:
            assert r.status == 200
            assert (await r.json())["body_length"] == len(body)
        forged = [
            {"X-WC-Webhook-Signature": signature("guessed-secret", body)},
            {"X-WC-Webhook-Signature": "not base64 at all"},
            {},
        ]
        for headers in forged:
            async with http.post(url, data=body, headers=headers) as r:
                assert r.status == 401
        tampered = body.replace(b"1999.00", b"0.01")
        async with http.post(
            url, data=tampered, headers={"X-WC-Webhook-Signature": signature(SECRET, body)}
        ) as r:
            assert r.status == 401
        big = b"x" * 5000
        async with http.post(url, data=big, headers={"X-WC-Webhook-Signature": signature(SECRET, big)}) as r:
            assert r.status == 413
    assert len(upstream.requests) == 1
    assert upstream.requests[0]["body_length"] == len(body)

    rotated = gw.cli("integrations", "rotate", "woo", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new_secret = json.loads(rotated.stdout)["secret"]
    async with aiohttp.ClientSession() as http:
        for secret in (SECRET, new_secret):  # both verify during the grace period
            async with http.post(
                url, data=body, headers={"X-WC-Webhook-Signature": signature(secret, body)}
            ) as r:
                assert r.status == 200, secret == SECRET
    assert SECRET not in gw.logs() and new_secret not in gw.logs()
