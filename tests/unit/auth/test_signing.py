"""The gateway's ES256 signing keys on both store backends: creation (once, even when instances
start together), rotation windows, revocation, JWKS, propagation, encryption at rest."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import jwt
import pytest

from gateway.auth import signing as signing_module
from gateway.auth.signing import SIGNING_KEYS_CHANNEL, SIGNING_KEYS_HASH, SigningKeys
from gateway.crypto import ENV_VAR, Keyring, KeyringError
from gateway.state import StateStore, open_store
from tests.support.timing import Clock

KEYRING = Keyring.from_env({ENV_VAR: "k1:" + base64.b64encode(bytes(range(32))).decode()})
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()


def claims(clock: Clock, **extra: object) -> dict[str, object]:
    now = int(clock())
    return {"sub": "alice", "iat": now, "exp": now + 900, "aud": "erp", **extra}


def verify_with_jwks(token: str, jwks: dict[str, object], clock: Clock) -> dict[str, object]:
    keyset = jwt.PyJWKSet.from_dict(jwks)
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keyset.keys if k.key_id == kid)
    return jwt.decode(
        token,
        key.key,
        algorithms=["ES256"],
        audience="erp",
        options={"verify_exp": False, "verify_iat": False},
    )


async def test_first_load_creates_one_key_and_later_loads_reuse_it(store: StateStore) -> None:
    clock = Clock(1_700_000_000.0)
    first = SigningKeys(store, KEYRING, clock=clock)
    keys = await first.load()
    assert len(keys) == 1
    second = SigningKeys(store, KEYRING, clock=clock)
    await second.load()
    assert second.active.kid == first.active.kid
    assert len(await store.hgetall(SIGNING_KEYS_HASH)) == 1


async def test_concurrent_starts_create_exactly_one_key(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(2 if store_url.startswith("local") else 5)]
    for opened in stores:
        await opened.open()
    try:
        instances = [SigningKeys(opened, KEYRING) for opened in stores]
        await asyncio.gather(*(instance.load() for instance in instances))
        assert len({instance.active.kid for instance in instances}) == 1
        assert len(await stores[0].hgetall(SIGNING_KEYS_HASH)) == 1
    finally:
        for opened in stores:
            await opened.close()


async def test_tokens_verify_against_jwks_and_key_for(store: StateStore) -> None:
    clock = Clock(time.time())
    signing = SigningKeys(store, KEYRING, clock=clock)
    await signing.load()
    token = signing.sign(claims(clock))
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": signing.active.kid, "typ": "JWT"}
    jwks = signing.jwks()
    assert [entry["kid"] for entry in jwks["keys"]] == [signing.active.kid]
    assert {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig"}.items() <= jwks["keys"][0].items()
    assert "d" not in jwks["keys"][0]  # public parts only
    assert verify_with_jwks(token, jwks, clock)["sub"] == "alice"
    [(public_key, algorithms)] = await signing.key_for(header["kid"])
    assert algorithms == ("ES256",)
    assert jwt.decode(token, public_key, algorithms=list(algorithms), audience="erp")["sub"] == "alice"
    assert await signing.key_for("no-such-kid") == ()


async def test_rotate_keeps_old_key_until_token_ttl(store: StateStore) -> None:
    clock = Clock(1_700_000_000.0)
    signing = SigningKeys(store, KEYRING, clock=clock)
    await signing.load()
    old_kid = signing.active.kid
    old_token = signing.sign(claims(clock))
    clock.now += 5
    new = await signing.rotate(revoke_old=False, token_ttl=900)
    assert signing.active.kid == new.kid != old_kid
    assert jwt.get_unverified_header(signing.sign(claims(clock)))["kid"] == new.kid
    assert [entry["kid"] for entry in signing.jwks()["keys"]] == [new.kid, old_kid]
    assert verify_with_jwks(old_token, signing.jwks(), clock)["sub"] == "alice"
    assert len(await signing.key_for(old_kid)) == 1
    clock.now += 899
    assert len(await signing.key_for(old_kid)) == 1
    clock.now += 1
    assert await signing.key_for(old_kid) == ()
    assert [entry["kid"] for entry in signing.jwks()["keys"]] == [new.kid]
    # a second rotation tidies the retired key away; an instance loading now agrees
    newest = await signing.rotate(revoke_old=False, token_ttl=900)
    assert set(await store.hgetall(SIGNING_KEYS_HASH)) == {new.kid, newest.kid}


async def test_rotate_with_revoke_old_drops_old_keys_at_once(store: StateStore) -> None:
    clock = Clock(1_700_000_000.0)
    signing = SigningKeys(store, KEYRING, clock=clock)
    await signing.load()
    first = signing.active.kid
    second = (await signing.rotate(revoke_old=False, token_ttl=900)).kid
    exposed_token = signing.sign(claims(clock))
    third = (await signing.rotate(revoke_old=True, token_ttl=900)).kid
    assert [entry["kid"] for entry in signing.jwks()["keys"]] == [third]
    assert await signing.key_for(first) == () and await signing.key_for(second) == ()
    assert jwt.get_unverified_header(exposed_token)["kid"] == second
    other = SigningKeys(store, KEYRING, clock=clock)
    await other.load()
    assert other.active.kid == third and [key.kid for key in other.verifiable()] == [third]


async def test_other_instances_follow_a_rotation_within_a_second(store_url: str) -> None:
    async with open_store(store_url) as store_a:
        store_b = store_a if store_url.startswith("local") else open_store(store_url)
        await store_b.open()
        try:
            a, b = SigningKeys(store_a, KEYRING), SigningKeys(store_b, KEYRING)
            await a.load()
            await b.start()
            await b.wait_loaded(timeout=5)
            assert b.active.kid == a.active.kid
            new = await a.rotate(revoke_old=True, token_ttl=900)
            deadline = time.monotonic() + 1.0
            while b.active.kid != new.kid:
                assert time.monotonic() < deadline, "rotation not seen within 1 s"
                await asyncio.sleep(0.02)
            assert [key.kid for key in b.verifiable()] == [new.kid]
        finally:
            await b.stop()
            if store_b is not store_a:
                await store_b.close()


async def test_unknown_kid_triggers_a_throttled_reload(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signing_module, "_UNKNOWN_KID_RELOAD_EVERY", 60.0)  # no timing dependence
    async with open_store(store_url) as store:
        a, b = SigningKeys(store, KEYRING), SigningKeys(store, KEYRING)
        await a.load()
        await b.load()
        new = await a.rotate(revoke_old=False, token_ttl=900)  # b is not subscribed
        assert len(await b.key_for(new.kid)) == 1
        newer = await a.rotate(revoke_old=False, token_ttl=900)
        assert await b.key_for(newer.kid) == ()  # within a second of the last miss: no store hit


async def test_keys_are_encrypted_at_rest_and_bound_to_their_kid(store: StateStore) -> None:
    signing = SigningKeys(store, KEYRING)
    await signing.load()
    await signing.rotate(revoke_old=False, token_ttl=60)
    raw = await store.hgetall(SIGNING_KEYS_HASH)
    for value in raw.values():
        assert value.startswith(b"v1.k1.") and b"PRIVATE KEY" not in value and b"created_at" not in value
    first, second = list(raw)
    await store.hset(SIGNING_KEYS_HASH, first, raw[second])  # a record swapped under another kid
    with pytest.raises(KeyringError, match="cannot be decrypted"):
        await SigningKeys(store, KEYRING).load()


async def test_wrong_master_key_is_a_clear_error(store: StateStore) -> None:
    await SigningKeys(store, KEYRING).load()
    wrong = Keyring.from_env({ENV_VAR: OTHER_KEY})
    with pytest.raises(KeyringError) as info:
        await SigningKeys(store, wrong).load()
    assert OTHER_KEY not in str(info.value)


async def test_reencrypt_after_master_key_rotation(store: StateStore) -> None:
    signing = SigningKeys(store, KEYRING)
    await signing.load()
    await signing.rotate(revoke_old=False, token_ttl=60)
    rotated = Keyring.from_env({ENV_VAR: f"k2:{OTHER_KEY},k1:{base64.b64encode(bytes(range(32))).decode()}"})
    moved = SigningKeys(store, rotated)
    await moved.load()
    assert await moved.reencrypt() == 2
    assert await moved.reencrypt() == 0
    only_new = SigningKeys(store, Keyring.from_env({ENV_VAR: f"k2:{OTHER_KEY}"}))
    await only_new.load()
    assert only_new.active.kid == signing.active.kid


async def test_reprs_never_show_private_keys(store: StateStore) -> None:
    signing = SigningKeys(store, KEYRING)
    await signing.load()
    text = repr(signing.active) + repr(signing.verifiable())
    assert "PRIVATE" not in text and signing.active.kid in text
    assert SIGNING_KEYS_CHANNEL == "signing-keys"


def test_sign_before_load_is_a_programming_error(tmp_path: Path) -> None:
    signing = SigningKeys(open_store(f"local:{tmp_path}"), KEYRING)
    with pytest.raises(RuntimeError):
        signing.sign({"sub": "x"})
