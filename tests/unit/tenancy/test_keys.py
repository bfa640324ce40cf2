"""The context key from the environment, once per process (App. B "Keys from the environment")."""

from __future__ import annotations

from gateway.crypto import Keyring
from gateway.tenancy import verify_context
from gateway.tenancy.keys import ContextKeys


def _sign(keys: ContextKeys) -> dict[str, str]:
    headers = {"X-Tenant-ID": "acme", "X-User-ID": "u", "X-User-Roles": "", "X-Request-ID": "r"}
    headers["X-Gateway-Context"] = keys.signer.sign("GET", "/x", "acme", "u", (), "r")
    return headers


def test_key_from_env_is_raw_text() -> None:
    keys = ContextKeys.from_env({"SHOPINO_GATEWAY_CONTEXT_KEY": "plain text ключ"}, Keyring.generate())
    assert keys.source == "env"
    assert verify_context(_sign(keys), "GET", "/x", "plain text ключ").tenant == "acme"
    assert "ключ" not in repr(keys)


def test_previous_key_is_accepted_by_the_gateway_checks() -> None:
    old = ContextKeys.from_env({"SHOPINO_GATEWAY_CONTEXT_KEY": "old"}, Keyring.generate())
    rotated = ContextKeys.from_env(
        {"SHOPINO_GATEWAY_CONTEXT_KEY": "new", "SHOPINO_GATEWAY_CONTEXT_KEY_PREVIOUS": "old"},
        Keyring.generate(),
    )
    assert verify_context(_sign(old), "GET", "/x", rotated.verification_keys())  # signed before the swap
    assert verify_context(_sign(rotated), "GET", "/x", "new")  # signs with the new key only


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
