"""The context MAC key, read once per process from the environment (Appendix B).

``$SHOPINO_GATEWAY_CONTEXT_KEY`` is raw text used as the HMAC key as it is (UTF-8); during a
rotation ``$SHOPINO_GATEWAY_CONTEXT_KEY_PREVIOUS`` is still accepted by the gateway's own checks
(the demo backend), while the gateway always signs with the current key.

When the variable is unset outside the demo, the gateway derives a key from the master key
with HKDF (info ``shopino-gateway context``) and logs a warning at start: the gateway keeps
working and keeps signing, but no backend can verify the assertion, because the derived key
never leaves the gateway. Refusing to start instead would break every existing deployment for
a header that nothing verified before; the warning makes the gap visible. In the demo an unset
key becomes a random per-process key (the demo command sets the variable for both sides).

A key that is set but short (fewer than 32 bytes) or still a deployment placeholder
(``REPLACE-ME``/``CHANGE-ME``, as in deploy/k8s/examples/) is refused at start-up: a forgotten
placeholder would otherwise become the MAC key every backend trusts, and it is public.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.crypto import Keyring, Secret
from gateway.tenancy.context import ContextSigner

ENV_VAR = "SHOPINO_GATEWAY_CONTEXT_KEY"
PREVIOUS_ENV_VAR = "SHOPINO_GATEWAY_CONTEXT_KEY_PREVIOUS"
HKDF_INFO = b"shopino-gateway context"
MIN_KEY_BYTES = 32
_PLACEHOLDERS = ("REPLACE-ME", "CHANGE-ME")


class ContextKeyError(ValueError):
    """A context key the gateway refuses; the message names the variable, never the value."""


def check_key(name: str, value: str) -> None:
    """Refuse a short or placeholder key in ``name``. SECURITY: the message never echoes it."""
    upper = value.upper()
    if any(marker in upper for marker in _PLACEHOLDERS):
        raise ContextKeyError(f"${name}: still a placeholder; set a random key (openssl rand -base64 32)")
    if len(value.encode("utf-8")) < MIN_KEY_BYTES:
        raise ContextKeyError(f"${name}: too short (at least {MIN_KEY_BYTES} bytes; openssl rand -base64 32)")


def check_env(environ: Mapping[str, str]) -> None:
    """Start-up check of the context key variables that are set (unset is allowed, see above)."""
    for name in (ENV_VAR, PREVIOUS_ENV_VAR):
        if environ.get(name):
            check_key(name, environ[name])


@dataclass(frozen=True, repr=False)
class ContextKeys:
    """The signer (current key) and every key the gateway's own checks accept."""

    signer: ContextSigner
    accepted: tuple[Secret, ...]
    source: str  # "env", "master-key" (backends cannot verify) or "ephemeral" (demo)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], keyring: Keyring, *, demo: bool = False) -> ContextKeys:
        check_env(environ)  # ContextKeyError: a short or placeholder key never signs anything
        current = environ.get(ENV_VAR, "")
        if current:
            raw, source = current.encode("utf-8"), "env"
        elif demo:
            raw, source = secrets.token_urlsafe(32).encode(), "ephemeral"
        else:
            raw, source = keyring.derive(HKDF_INFO).reveal(), "master-key"
        accepted = [Secret(raw)]
        previous = environ.get(PREVIOUS_ENV_VAR, "")
        if previous:
            accepted.append(Secret(previous.encode("utf-8")))
        return cls(ContextSigner(raw), tuple(accepted), source)

    def verification_keys(self) -> list[bytes]:
        """Raw keys for ``verify_context`` (current first)."""
        return [key.reveal() for key in self.accepted]

    def __repr__(self) -> str:
        return f"ContextKeys(source={self.source!r}, keys={len(self.accepted)})"
