"""The master-key keyring: parsing $SHOPINO_GATEWAY_MASTER_KEY, AES-256-GCM values bound to their
context, rotation, and that no key material ever shows in an error or a repr."""

from __future__ import annotations

import base64
import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.crypto import ENV_VAR, DecryptionError, Keyring, KeyringError, Secret, context

MAX_EXAMPLES = 50 if os.environ.get("CI") == "true" else 200
KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
B64_A = base64.b64encode(KEY_A).decode()
B64_B = base64.b64encode(KEY_B).decode()
CTX = context("mfa-secret", "acme", "alice", "active")


def ring(text: str) -> Keyring:
    return Keyring.from_env({ENV_VAR: text})


def test_bare_value_is_k1() -> None:
    keyring = ring(B64_A)
    assert keyring.key_ids == ("k1",) and keyring.primary_id == "k1"
    assert not keyring.ephemeral
    assert keyring.encrypt(b"x", context=CTX).startswith(b"v1.k1.")


def test_several_keys_first_encrypts_all_decrypt() -> None:
    old = ring(f"old:{B64_A}")
    value = old.encrypt(b"secret", context=CTX)
    both = ring(f" new:{B64_B} , old:{B64_A} ")
    assert both.key_ids == ("new", "old")
    assert both.decrypt(value, context=CTX) == b"secret"
    assert both.key_id_of(both.encrypt(b"y", context=CTX)) == "new"


def test_urlsafe_and_unpadded_base64_accepted() -> None:
    key = bytes([0xFB] * 32)  # encodes with + and / in the standard alphabet
    urlsafe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert ring(urlsafe).decrypt(ring(base64.b64encode(key).decode()).encrypt(b"z", context=CTX), context=CTX)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (f"k1:{B64_A},k2:not*base64", "entry 2 is not valid base64"),
        (f"k1:{B64_A},k2:{base64.b64encode(b'short').decode()}", "entry 2 decodes to 5 bytes"),
        (f"k1:{B64_A},k1:{B64_B}", "entry 2 repeats the key id of entry 1"),
        (f"k1:{B64_A},", "entry 2 is empty"),
        (f"k1:{B64_A},{B64_B}", "entry 2 has no 'ID:' prefix"),
        (f"{B64_A}:k1", "entry 1: the id must be"),  # pasted the wrong way round
        (f"bad.id:{B64_A}", "entry 1: the id must be"),
    ],
)
def test_invalid_configurations_name_the_entry_never_the_key(text: str, fragment: str) -> None:
    with pytest.raises(KeyringError) as info:
        ring(text)
    message = str(info.value)
    assert fragment in message
    for material in (B64_A, B64_B, B64_A[:12], B64_B[:12], "not*base64"):
        assert material not in message


def test_missing_key_is_an_error_outside_demo() -> None:
    with pytest.raises(KeyringError, match=ENV_VAR):
        Keyring.from_env({})
    with pytest.raises(KeyringError):
        Keyring.from_env({ENV_VAR: "  "})


def test_demo_without_key_gets_an_ephemeral_one() -> None:
    first, second = Keyring.from_env({}, demo=True), Keyring.from_env({}, demo=True)
    assert first.ephemeral and first.primary_id == "k1"
    value = first.encrypt(b"p", context=CTX)
    assert first.decrypt(value, context=CTX) == b"p"
    with pytest.raises(DecryptionError):
        second.decrypt(value, context=CTX)  # random per process
    assert not Keyring.from_env({ENV_VAR: B64_A}, demo=True).ephemeral


def test_value_format_and_fresh_nonce() -> None:
    keyring = ring(B64_A)
    one, two = keyring.encrypt(b"same", context=CTX), keyring.encrypt(b"same", context=CTX)
    assert one != two
    version, kid, body = one.split(b".")
    assert (version, kid) == (b"v1", b"k1")
    raw = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
    assert len(raw) == 12 + len(b"same") + 16  # 96-bit nonce, ciphertext, 128-bit tag
    assert b"same" not in one


def test_wrong_key_and_unknown_key_id_fail() -> None:
    value = ring(f"k1:{B64_A}").encrypt(b"s", context=CTX)
    with pytest.raises(DecryptionError, match="does not authenticate"):
        ring(f"k1:{B64_B}").decrypt(value, context=CTX)
    with pytest.raises(DecryptionError, match="not in the keyring"):
        ring(f"k9:{B64_A}").decrypt(value, context=CTX)


def test_swapped_context_fails() -> None:
    keyring = ring(B64_A)
    value = keyring.encrypt(b"alice's secret", context=context("mfa-secret", "acme", "alice", "active"))
    for other in (
        context("mfa-secret", "acme", "bob", "active"),
        context("mfa-secret", "other", "alice", "active"),
        context("mfa-secret", "acme", "alice", "pending"),
        context("signing-key", "acme", "alice", "active"),
    ):
        with pytest.raises(DecryptionError):
            keyring.decrypt(value, context=other)


def test_context_encoding_is_unambiguous() -> None:
    assert context("a:b", "c") != context("a", "b:c")
    assert context("a\x00", "b") != context("a", "\x00b")


def test_tampering_fails() -> None:
    keyring = ring(f"k1:{B64_A},k2:{B64_B}")
    value = keyring.encrypt(b"payload", context=CTX)
    head, body = value.rsplit(b".", 1)
    for position in (0, len(body) // 2, len(body) - 2):
        flipped = bytearray(body)
        flipped[position] = ord("A") if flipped[position] != ord("A") else ord("B")
        with pytest.raises(DecryptionError):
            keyring.decrypt(head + b"." + bytes(flipped), context=CTX)
    with pytest.raises(DecryptionError):  # the key id is authenticated too
        keyring.decrypt(b"v1.k2." + body, context=CTX)
    for malformed in (b"", b"v1.k1", b"v2.k1." + body, b"v1.k1.!!!", b"v1.k1.AAAA", b"v1.bad id." + body):
        with pytest.raises(DecryptionError):
            keyring.decrypt(malformed, context=CTX)


def test_rotation_and_reencryption() -> None:
    before = ring(f"k1:{B64_A}")
    old_value = before.encrypt(b"totp", context=CTX)
    after = ring(f"k2:{B64_B},k1:{B64_A}")
    assert after.needs_rotation(old_value)
    fresh = after.reencrypt(old_value, context=CTX)
    assert not after.needs_rotation(fresh) and after.key_id_of(fresh) == "k2"
    assert after.reencrypt(fresh, context=CTX) is fresh  # already primary: untouched
    only_new = ring(f"k2:{B64_B}")
    assert only_new.decrypt(fresh, context=CTX) == b"totp"
    with pytest.raises(DecryptionError):
        only_new.decrypt(old_value, context=CTX)


def test_no_key_material_in_reprs() -> None:
    keyring = ring(f"k1:{B64_A}")
    secret = Secret(KEY_A)
    for text in (repr(keyring), str(keyring), repr(secret), str(secret), f"{secret}", repr([secret])):
        assert B64_A not in text and KEY_A.hex() not in text and repr(KEY_A) not in text
    assert repr(keyring) == "Keyring(ids=['k1'], ephemeral=False)"


def test_secret_wrapper() -> None:
    secret = Secret(bytearray(KEY_A))
    assert secret.reveal() == KEY_A and len(secret) == 32
    assert secret == Secret(KEY_A) and secret != Secret(KEY_B)
    with pytest.raises(TypeError):
        hash(secret)
    with pytest.raises(TypeError):
        pickle.dumps(secret)


@settings(max_examples=MAX_EXAMPLES, database=None)
@given(plaintext=st.binary(max_size=512), parts=st.lists(st.text(max_size=20), max_size=4))
def test_roundtrip_property(plaintext: bytes, parts: list[str]) -> None:
    keyring = ring(f"k1:{B64_A}")
    ctx = context(*parts)
    value = keyring.encrypt(plaintext, context=ctx)
    assert keyring.decrypt(value, context=ctx) == plaintext
    with pytest.raises(DecryptionError):
        keyring.decrypt(value, context=ctx + b"x")
