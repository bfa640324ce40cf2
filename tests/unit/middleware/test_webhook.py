"""SPEC §10: the webhook stage, in its place in ``PIPELINE`` on a real runtime (integration
secrets loaded from a real store): a body signed with the integration's secret passes and
reaches the upstream byte for byte; a forged, missing or replayed-onto-another-body signature
is 401 ``invalid-token`` and never forwarded; a body over the route's ``max_body`` is 413,
declared or not."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator

import pytest

from gateway.middleware.webhook import verify_webhook
from gateway.pipeline import PIPELINE
from tests.support.stage_server import problem_type, send_raw
from tests.unit.middleware.conftest import EchoUpstream, Gateway, GatewayFactory

SECRET = "whsec-test-0123456789"
MAX_BODY = 64
CONFIG = (
    "integrations:\n"
    f"  woo: {{scheme: woocommerce, secret: '{SECRET}'}}\n"
    f"  daraz: {{scheme: hmac, secret: '{SECRET}', header: X-Daraz-Signature, encoding: hex,\n"
    "           prefix: 'sha256='}\n"
    "routes:\n"
    "  - {name: woo, prefix: /hooks/woo, upstream: erp, auth: webhook, integration: woo,\n"
    f"     max_body: {MAX_BODY}}}\n"
    "  - {name: daraz, prefix: /hooks/daraz, upstream: erp, auth: webhook, integration: daraz}\n"
)
# Bytes no decoder may touch: a JSON body with a non-UTF-8 byte, a NUL and a CRLF.
BODY = b'{"order": 7, "note": "\xff\x00\r\n"}'


def test_the_stage_runs_in_the_pipeline() -> None:
    assert verify_webhook in PIPELINE


def woo_signature(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def woo(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-WC-Webhook-Signature": woo_signature(body, secret), "Content-Type": "application/json"}


@pytest.fixture
async def gw(gateway: GatewayFactory) -> Gateway:
    return await gateway(CONFIG)


async def test_a_valid_signature_passes_and_the_body_is_forwarded_intact(
    gw: Gateway, echo_upstream: EchoUpstream
) -> None:
    async with gw.client.post("/hooks/woo/order", data=BODY, headers=woo(BODY)) as response:
        assert response.status == 200
    method, path, _, body = echo_upstream.seen[0]
    assert (method, path, body) == ("POST", "/hooks/woo/order", BODY)


async def test_the_hmac_scheme_with_its_header_encoding_and_prefix(
    gw: Gateway, echo_upstream: EchoUpstream
) -> None:
    signature = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    async with gw.client.post(
        "/hooks/daraz/x", data=BODY, headers={"X-Daraz-Signature": signature}
    ) as response:
        assert response.status == 200
    assert echo_upstream.seen[0][3] == BODY
    # The other integration's header does not count here.
    async with gw.client.post("/hooks/daraz/x", data=BODY, headers=woo(BODY)) as response:
        assert response.status == 401


@pytest.mark.parametrize(
    "headers",
    [
        woo(BODY, secret="guessed-secret"),  # signed with another secret
        woo(BODY + b" "),  # a valid signature of another body
        woo(b""),
        {"X-WC-Webhook-Signature": ""},
        {"X-WC-Webhook-Signature": "not base64!"},
        {},  # unsigned
    ],
)
async def test_a_forged_or_missing_signature_is_refused(
    gw: Gateway, echo_upstream: EchoUpstream, headers: dict[str, str]
) -> None:
    async with gw.client.post("/hooks/woo/order", data=BODY, headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["type"] == problem_type("invalid-token")
    assert echo_upstream.seen == []


async def test_a_signature_header_sent_twice_is_refused(gw: Gateway, echo_upstream: EchoUpstream) -> None:
    # One valid and one chosen by the attacker: which one a backend reads is not ours to guess.
    signature = woo_signature(BODY)
    head = (
        "POST /hooks/woo/order HTTP/1.1\r\nHost: shop.example\r\n"
        f"Content-Length: {len(BODY)}\r\nX-WC-Webhook-Signature: {signature}\r\nX-WC-Webhook-Signature: x"
    )
    answer = await send_raw(gw.client, head, BODY)
    assert answer.status == 401
    assert answer.json()["type"] == problem_type("invalid-token")
    assert echo_upstream.seen == []


async def test_a_declared_body_over_max_body_is_refused(gw: Gateway, echo_upstream: EchoUpstream) -> None:
    big = b"x" * (MAX_BODY + 1)
    async with gw.client.post("/hooks/woo/order", data=big, headers=woo(big)) as response:
        assert response.status == 413
        assert (await response.json())["type"] == problem_type("payload-too-large")
    assert echo_upstream.seen == []


async def test_a_chunked_body_over_max_body_is_refused(gw: Gateway, echo_upstream: EchoUpstream) -> None:
    big = b"y" * (4 * MAX_BODY)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 16):
            yield big[start : start + 16]

    async with gw.client.post("/hooks/woo/order", data=chunks(), headers=woo(big)) as response:
        assert response.status == 413
        assert (await response.json())["type"] == problem_type("payload-too-large")
    assert echo_upstream.seen == []


async def test_a_body_at_max_body_passes(gw: Gateway, echo_upstream: EchoUpstream) -> None:
    exact = b"z" * MAX_BODY
    async with gw.client.post("/hooks/woo/order", data=exact, headers=woo(exact)) as response:
        assert response.status == 200
    assert echo_upstream.seen[0][3] == exact
