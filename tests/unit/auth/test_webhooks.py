"""Webhook signatures (WooCommerce and generic HMAC) and rotating integration secrets on both
store backends: grace periods, encryption at rest, propagation to a second instance."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from multidict import CIMultiDict

from gateway.auth.webhooks import (
    INTEGRATIONS_CHANNEL,
    INTEGRATIONS_HASH,
    IntegrationConfig,
    IntegrationSecrets,
    IntegrationSecretsUnavailable,
    invalid_signature,
    verify_signature,
)
from gateway.crypto import ENV_VAR, Keyring
from gateway.state import StateStore, open_store
from tests.support.timing import Clock

KEYRING = Keyring.from_env({ENV_VAR: "k1:" + base64.b64encode(bytes(range(32))).decode()})
SECRET = "wc-secret-Z8q1u2v3w4x5"
WOO = IntegrationConfig(name="woocommerce", scheme="woocommerce", secret=SECRET)
# A raw body as WooCommerce sends it: the signature covers these exact bytes, spacing included.
BODY = b'{"id": 4211, "status": "processing", "total": "1999.00", "currency": "PKR",\n "billing": {}}'


def woo_signature(secret: bytes, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()


# -- signatures ----------------------------------------------------------------------------------
def test_woocommerce_signature_over_raw_body_verifies() -> None:
    headers = {"X-WC-Webhook-Signature": woo_signature(SECRET.encode(), BODY)}
    assert verify_signature(WOO, [SECRET.encode()], BODY, headers)


def test_header_name_is_case_insensitive_and_multidict_works() -> None:
    sig = woo_signature(SECRET.encode(), BODY)
    assert verify_signature(WOO, [SECRET.encode()], BODY, {"x-wc-webhook-signature": sig})
    assert verify_signature(WOO, [SECRET.encode()], BODY, CIMultiDict({"X-WC-Webhook-Signature": sig}))


def test_body_changed_by_one_byte_is_refused() -> None:
    headers = {"X-WC-Webhook-Signature": woo_signature(SECRET.encode(), BODY)}
    for index in (0, len(BODY) // 2, len(BODY) - 1):
        altered = bytearray(BODY)
        altered[index] ^= 0x01
        assert not verify_signature(WOO, [SECRET.encode()], bytes(altered), headers)
    assert not verify_signature(WOO, [SECRET.encode()], BODY + b" ", headers)


def test_signature_for_another_secret_is_refused() -> None:
    headers = {"X-WC-Webhook-Signature": woo_signature(b"someone-else", BODY)}
    assert not verify_signature(WOO, [SECRET.encode()], BODY, headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-WC-Webhook-Signature": ""},
        {"X-WC-Webhook-Signature": "   "},
        {"X-Signature": woo_signature(SECRET.encode(), BODY)},  # wrong header name
    ],
    ids=["missing", "empty", "blank", "other-header"],
)
def test_missing_or_empty_header_is_refused(headers: dict[str, str]) -> None:
    assert not verify_signature(WOO, [SECRET.encode()], BODY, headers)


def test_duplicated_header_is_refused_even_when_one_copy_is_valid() -> None:
    good = woo_signature(SECRET.encode(), BODY)
    multi: CIMultiDict[str] = CIMultiDict()
    multi.add("X-WC-Webhook-Signature", good)
    multi.add("X-WC-Webhook-Signature", good)
    assert not verify_signature(WOO, [SECRET.encode()], BODY, multi)
    differently_cased = {"X-WC-Webhook-Signature": good, "x-wc-webhook-signature": good}
    assert not verify_signature(WOO, [SECRET.encode()], BODY, differently_cased)
    # A proxy folding duplicates into one comma-separated value is refused too.
    assert not verify_signature(WOO, [SECRET.encode()], BODY, {"X-WC-Webhook-Signature": f"{good}, {good}"})


@pytest.mark.parametrize(
    "value",
    [
        "not base64 at all!",
        "%%%%",
        "AAAA",  # valid base64, wrong length
        "A" * 10_000,
        "é" * 44,
        "\x00" * 44,
        "c2lnbmF0dXJl\n",
        base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # the url-safe alphabet is not WooCommerce's
        base64.b64encode(b"\x00" * 32).decode().rstrip("="),  # unpadded
    ],
    ids=["text", "percent", "short", "huge", "non-ascii", "nul", "newline", "urlsafe", "unpadded"],
)
def test_garbage_signature_is_refused_without_raising(value: str) -> None:
    assert not verify_signature(WOO, [SECRET.encode()], BODY, {"X-WC-Webhook-Signature": value})


def test_no_secrets_or_empty_secret_verifies_nothing() -> None:
    assert not verify_signature(WOO, [], BODY, {"X-WC-Webhook-Signature": woo_signature(b"", BODY)})
    assert not verify_signature(WOO, [b""], BODY, {"X-WC-Webhook-Signature": woo_signature(b"", BODY)})


def test_any_of_several_secrets_verifies() -> None:
    headers = {"X-WC-Webhook-Signature": woo_signature(b"old-secret", BODY)}
    assert verify_signature(WOO, [b"new-secret", b"old-secret"], BODY, headers)


def test_hmac_scheme_hex_with_prefix() -> None:
    config = IntegrationConfig(
        name="github-like", scheme="hmac", secret="s3cr3t", header="X-Hub-Signature-256", encoding="hex",
        prefix="sha256=",
    )  # fmt: skip
    digest = hmac.new(b"s3cr3t", BODY, hashlib.sha256).hexdigest()
    assert verify_signature(config, [b"s3cr3t"], BODY, {"X-Hub-Signature-256": f"sha256={digest}"})
    assert verify_signature(config, [b"s3cr3t"], BODY, {"x-hub-signature-256": f"sha256={digest.upper()}"})
    assert not verify_signature(config, [b"s3cr3t"], BODY, {"X-Hub-Signature-256": digest})  # no prefix
    assert not verify_signature(config, [b"s3cr3t"], BODY, {"X-Hub-Signature-256": f"sha1={digest}"})
    assert not verify_signature(config, [b"s3cr3t"], BODY, {"X-Hub-Signature-256": f"sha256={digest[:-1]}"})
    spaced = " ".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    assert not verify_signature(config, [b"s3cr3t"], BODY, {"X-Hub-Signature-256": f"sha256={spaced}"})
    assert not verify_signature(config, [b"s3cr3t"], BODY + b"x", {"X-Hub-Signature-256": f"sha256={digest}"})


def test_hmac_scheme_sha512_default_header() -> None:
    config = IntegrationConfig(name="daraz", scheme="hmac", secret="k", algorithm="sha512")
    assert config.signature_header == "X-Signature"
    good = base64.b64encode(hmac.new(b"k", BODY, hashlib.sha512).digest()).decode()
    sha256 = base64.b64encode(hmac.new(b"k", BODY, hashlib.sha256).digest()).decode()
    assert verify_signature(config, [b"k"], BODY, {"X-Signature": good})
    assert not verify_signature(config, [b"k"], BODY, {"X-Signature": sha256})
    hex_config = IntegrationConfig(name="d2", scheme="hmac", secret="k", algorithm="sha512", encoding="hex")
    assert verify_signature(
        hex_config, [b"k"], BODY, {"X-Signature": hmac.new(b"k", BODY, hashlib.sha512).hexdigest()}
    )


def test_config_validation_and_masked_repr() -> None:
    assert SECRET not in repr(WOO) and SECRET not in str(WOO)
    assert "redacted" in repr(WOO)
    with pytest.raises(ValueError, match="sha256 or sha512") as excinfo:
        IntegrationConfig(name="x", scheme="hmac", secret="top-secret-value", algorithm="md5")
    assert "top-secret-value" not in str(excinfo.value)
    with pytest.raises(ValueError, match="secret"):
        IntegrationConfig(name="x", scheme="hmac", secret="")
    with pytest.raises(ValueError):
        IntegrationConfig(name="x", scheme="woocommerce", secret="s", algorithm="sha512")
    with pytest.raises(ValueError):
        IntegrationConfig(name="x", scheme="hmac", secret="s", header="Bad Header")
    with pytest.raises(ValueError):
        IntegrationConfig(name="x", scheme="hmac", secret="s", rotation_grace=-1)


# -- rotation on both backends -------------------------------------------------------------------
async def stop_all(*instances: IntegrationSecrets) -> None:
    """Stop snapshots once they are idle. On Python 3.11, cancelling a snapshot task while its
    reload is opening a Redis connection can be swallowed (asyncio.wait_for inside redis-py),
    leaving ``SyncedSnapshot.stop`` waiting forever; that belongs to gateway/state/sync.py, so
    here the in-flight reload (triggered by our own publish) gets a moment to finish, and a
    stuck stop fails the test instead of hanging the suite."""
    await asyncio.sleep(0.1)
    async with asyncio.timeout(5):
        for instance in instances:
            await instance.stop()


@pytest.fixture
async def secrets_factory(
    store: StateStore,
) -> AsyncIterator[Callable[..., Awaitable[IntegrationSecrets]]]:
    started: list[IntegrationSecrets] = []

    async def factory(on: StateStore | None = None, clock: Clock | None = None) -> IntegrationSecrets:
        instance = IntegrationSecrets(on or store, KEYRING, clock=clock or time.time)
        started.append(instance)
        await instance.start()
        await instance.wait_loaded(2)
        return instance

    yield factory
    await stop_all(*started)


def signed(secret: bytes) -> dict[str, str]:
    return {"X-WC-Webhook-Signature": woo_signature(secret, BODY)}


async def test_configured_secret_is_the_only_one_until_a_rotation(
    secrets_factory: Callable[..., Awaitable[IntegrationSecrets]],
) -> None:
    integrations = await secrets_factory()
    assert integrations.secrets_for("woocommerce", WOO.secret_bytes) == [WOO.secret_bytes]


async def test_rotation_keeps_old_and_new_valid_for_the_grace_only(
    store: StateStore, secrets_factory: Callable[..., Awaitable[IntegrationSecrets]]
) -> None:
    clock = Clock(1_700_000_000.0)
    integrations = await secrets_factory(clock=clock)
    old = WOO.secret_bytes
    new = await integrations.rotate("woocommerce", b"brand-new-secret-1", 3600)
    assert new == b"brand-new-secret-1"

    candidates = integrations.secrets_for("woocommerce", old)
    assert verify_signature(WOO, candidates, BODY, signed(old))
    assert verify_signature(WOO, candidates, BODY, signed(new))

    # A second rotation during the grace: the stored current becomes the previous one.
    clock.now += 10
    newer = await integrations.rotate("woocommerce", None, 3600)
    assert len(newer) >= 32 and newer != new
    candidates = integrations.secrets_for("woocommerce", old)
    assert verify_signature(WOO, candidates, BODY, signed(newer))
    assert verify_signature(WOO, candidates, BODY, signed(new))
    assert not verify_signature(WOO, candidates, BODY, signed(old))

    clock.now += 3600
    candidates = integrations.secrets_for("woocommerce", old)
    assert candidates == [newer]
    assert verify_signature(WOO, candidates, BODY, signed(newer))
    assert not verify_signature(WOO, candidates, BODY, signed(new))

    # Survives a restart: a fresh instance reads the rotation from the store.
    fresh = await secrets_factory(clock=clock)
    assert fresh.secrets_for("woocommerce", old) == [newer]


async def test_first_rotation_grace_expires_for_the_configured_secret(
    secrets_factory: Callable[..., Awaitable[IntegrationSecrets]],
) -> None:
    clock = Clock(1_700_000_000.0)
    integrations = await secrets_factory(clock=clock)
    new = await integrations.rotate("woocommerce", None, 60)
    assert set(integrations.secrets_for("woocommerce", WOO.secret_bytes)) == {new, WOO.secret_bytes}
    clock.now += 60
    candidates = integrations.secrets_for("woocommerce", WOO.secret_bytes)
    assert not verify_signature(WOO, candidates, BODY, signed(WOO.secret_bytes))
    assert verify_signature(WOO, candidates, BODY, signed(new))


async def test_stored_value_is_encrypted_and_bound_to_the_integration(
    store: StateStore, secrets_factory: Callable[..., Awaitable[IntegrationSecrets]]
) -> None:
    integrations = await secrets_factory()
    new = await integrations.rotate("woocommerce", None, 60)
    raw = await store.hget(INTEGRATIONS_HASH, "woocommerce")
    assert raw is not None
    for needle in (new, base64.b64encode(new), WOO.secret_bytes, base64.b64encode(WOO.secret_bytes)):
        assert needle not in raw
    assert new.decode() not in repr(integrations)

    # A record copied onto another integration's field does not decrypt there: fail closed.
    await store.hset(INTEGRATIONS_HASH, "daraz", raw)
    assert await integrations.reload()
    assert integrations.secrets_for("daraz", b"configured-daraz") == []
    assert integrations.secrets_for("woocommerce", WOO.secret_bytes)[0] == new


async def test_rotate_validates_input(secrets_factory: Callable[..., Awaitable[IntegrationSecrets]]) -> None:
    integrations = await secrets_factory()
    with pytest.raises(ValueError):
        await integrations.rotate("woocommerce", b"", 60)
    with pytest.raises(ValueError):
        await integrations.rotate("woocommerce", b"x", float("nan"))
    with pytest.raises(ValueError):
        await integrations.rotate("bad name", b"x", 60)


async def test_not_loaded_fails_closed(store: StateStore) -> None:
    integrations = IntegrationSecrets(store, KEYRING)
    with pytest.raises(IntegrationSecretsUnavailable):
        integrations.secrets_for("woocommerce", WOO.secret_bytes)
    with pytest.raises(IntegrationSecretsUnavailable):
        integrations.verify(WOO, BODY, signed(WOO.secret_bytes))


async def test_a_webhook_verifies_under_the_secrets_accepted_now(
    secrets_factory: Callable[..., Awaitable[IntegrationSecrets]],
) -> None:
    clock = Clock(1_700_000_000.0)
    integrations = await secrets_factory(clock=clock)
    old = WOO.secret_bytes
    assert integrations.verify(WOO, BODY, signed(old))
    new = await integrations.rotate("woocommerce", b"brand-new-secret-2", 60)
    assert integrations.verify(WOO, BODY, signed(new)) and integrations.verify(WOO, BODY, signed(old))
    clock.now += 61  # the grace is over: the configured secret no longer verifies
    assert integrations.verify(WOO, BODY, signed(new)) and not integrations.verify(WOO, BODY, signed(old))
    refusal = invalid_signature()
    assert refusal.status == 401
    assert refusal.headers == {"WWW-Authenticate": 'Signature realm="shopino-webhooks"'}


async def test_second_instance_on_redis_sees_rotation_via_pubsub(redis_url: str) -> None:
    async with open_store(redis_url) as first_store, open_store(redis_url) as second_store:
        # A long resync, so only the pub/sub message can explain a prompt pick-up.
        first = IntegrationSecrets(first_store, KEYRING, resync=300)
        second = IntegrationSecrets(second_store, KEYRING, resync=300)
        await first.start()
        await second.start()
        try:
            await first.wait_loaded(2)
            await second.wait_loaded(2)
            assert second.secrets_for("woocommerce", WOO.secret_bytes) == [WOO.secret_bytes]
            # Watch the channel too, so the poll below starts only once the message is out.
            sub = await second_store.subscribe(INTEGRATIONS_CHANNEL)
            try:
                await asyncio.sleep(0.05)  # let the snapshots' subscriptions settle
                new = await first.rotate("woocommerce", None, 60)
                async with asyncio.timeout(2):
                    channel, _message = await anext(sub)
                assert channel == INTEGRATIONS_CHANNEL
            finally:
                await sub.close()
            deadline = time.monotonic() + 2.0
            while new not in second.secrets_for("woocommerce", WOO.secret_bytes):
                assert time.monotonic() < deadline, "rotation not seen by the second instance within 2 s"
                await asyncio.sleep(0.02)
            assert verify_signature(
                WOO, second.secrets_for("woocommerce", WOO.secret_bytes), BODY, signed(new)
            )
        finally:
            await stop_all(first, second)
