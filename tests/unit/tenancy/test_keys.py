"""The context key from the environment, once per process (App. B "Keys from the environment")."""

from __future__ import annotations

import pytest

from gateway.crypto import Keyring
from gateway.tenancy import verify_context
from gateway.tenancy.keys import ContextKeyError, ContextKeys

RAW = "plain text ключ, long enough to be a key"
OLD, NEW = "old-" + "o" * 40, "new-" + "n" * 40


def _sign(keys: ContextKeys) -> dict[str, str]:
    headers = {"X-Tenant-ID": "acme", "X-User-ID": "u", "X-User-Roles": "", "X-Request-ID": "r"}
    headers["X-Gateway-Context"] = keys.signer.sign("GET", "/x", "acme", "u", (), "r")
    return headers


def test_key_from_env_is_raw_text() -> None:
    keys = ContextKeys.from_env({"SHOPINO_GATEWAY_CONTEXT_KEY": RAW}, Keyring.generate())
    assert keys.source == "env"
    assert verify_context(_sign(keys), "GET", "/x", RAW).tenant == "acme"
    assert "ключ" not in repr(keys)


def test_previous_key_is_accepted_by_the_gateway_checks() -> None:
    old = ContextKeys.from_env({"SHOPINO_GATEWAY_CONTEXT_KEY": OLD}, Keyring.generate())
    rotated = ContextKeys.from_env(
        {"SHOPINO_GATEWAY_CONTEXT_KEY": NEW, "SHOPINO_GATEWAY_CONTEXT_KEY_PREVIOUS": OLD},
        Keyring.generate(),
    )
    assert verify_context(_sign(old), "GET", "/x", rotated.verification_keys())  # signed before the swap
    assert verify_context(_sign(rotated), "GET", "/x", NEW)  # signs with the new key only


def test_unset_key_is_derived_from_the_master_key() -> None:
    keyring = Keyring.generate()
    first = ContextKeys.from_env({}, keyring)
    second = ContextKeys.from_env({"SHOPINO_GATEWAY_CONTEXT_KEY": ""}, keyring)
    assert first.source == second.source == "master-key"
    assert first.verification_keys() == second.verification_keys()  # every worker agrees
    assert first.verification_keys() != ContextKeys.from_env({}, Keyring.generate()).verification_keys()
    assert keyring.derive(b"a").reveal() != keyring.derive(b"b").reveal()


def test_demo_without_a_key_gets_a_random_one() -> None:
    keys = ContextKeys.from_env({}, Keyring.generate(), demo=True)
    assert keys.source == "ephemeral"


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("SHOPINO_GATEWAY_CONTEXT_KEY", "s3cret-but-31-bytes-long-......", "too short"),
        (
            "SHOPINO_GATEWAY_CONTEXT_KEY",
            "REPLACE-ME: openssl rand -base64 32 (backends verify it)",
            "placeholder",
        ),
        ("SHOPINO_GATEWAY_CONTEXT_KEY", "our-key-change-me-before-production-please", "placeholder"),
        ("SHOPINO_GATEWAY_CONTEXT_KEY_PREVIOUS", "tiny-old-key", "too short"),
    ],
)
def test_a_short_or_placeholder_key_is_refused_without_echoing_it(name: str, value: str, why: str) -> None:
    environ = {"SHOPINO_GATEWAY_CONTEXT_KEY": NEW, name: value}
    with pytest.raises(ContextKeyError) as refused:
        ContextKeys.from_env(environ, Keyring.generate())
    assert str(refused.value).startswith(f"${name}: ") and why in str(refused.value)
    assert value not in str(refused.value)  # SECURITY: never echoed
    with pytest.raises(ContextKeyError):  # the demo gets no exemption for a key the operator set
        ContextKeys.from_env(environ, Keyring.generate(), demo=True)


def test_a_32_byte_key_is_accepted() -> None:
    key = "k" * 32
    assert ContextKeys.from_env({"SHOPINO_GATEWAY_CONTEXT_KEY": key}, Keyring.generate()).source == "env"
