"""The master-key keyring: AES-256-GCM encryption of secrets at rest (SPEC §6, Appendix B).

``$SHOPINO_GATEWAY_MASTER_KEY`` holds ``ID:BASE64`` entries separated by commas (32-byte keys);
the first entry encrypts, every entry decrypts, so a rotation is: prepend the new key, restart,
re-encrypt, then drop the old key. A bare base64 value means id ``k1``.

Every value carries its key id: ``v1.<kid>.<base64url(nonce || ciphertext+tag)>``. The caller's
``context`` (purpose, tenant, user...) is authenticated as associated data, so a ciphertext
copied to another user's record, or to another purpose, fails to decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from collections.abc import Mapping, Sequence
from typing import NoReturn

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENV_VAR = "SHOPINO_GATEWAY_MASTER_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12  # the 96-bit nonce GCM is specified for; random per value (2^32 values per key is safe)
_VERSION = b"v1"
_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_BARE_ID = "k1"


class KeyringError(ValueError):
    """The master key configuration is missing or invalid. Messages name entry positions only,
    never key material (nor ids that failed validation, which may be a pasted key)."""


class DecryptionError(Exception):
    """A stored value cannot be decrypted: malformed, unknown key id, wrong context or tampered."""


class Secret:
    """Bytes that must never reach a log, an exception or a repr. ``reveal()`` is the only way
    to the value, so every use of the secret is greppable."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # SECURITY: constant time, so comparing secrets leaks no prefix length.
        return hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]  # equal secrets must not be findable by hash

    def __reduce__(self) -> NoReturn:
        # SECURITY: pickling would write the raw value into caches, queues or crash dumps.
        raise TypeError("Secret values cannot be pickled")


SecretBytes = Secret


def context(*parts: str) -> bytes:
    """An unambiguous associated-data encoding of ``parts`` (a JSON array), so that
    ``("a:b", "c")`` and ``("a", "b:c")`` never collide whatever characters ids contain."""
    return orjson.dumps(list(parts))


def _b64decode_key(text: str) -> bytes | None:
    # Standard or URL-safe alphabet, padding optional; anything else is refused, not ignored.
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        return None


class Keyring:
    """An ordered set of AES-256 keys: the first (primary) encrypts, all decrypt."""

    __slots__ = ("_aead", "_ids", "_primary", "ephemeral")

    def __init__(self, keys: Sequence[tuple[str, Secret]], *, ephemeral: bool = False) -> None:
        if not keys:
            raise KeyringError("the keyring needs at least one key")
        self._aead: dict[str, AESGCM] = {}
        for position, (kid, key) in enumerate(keys, start=1):
            if not _KID_RE.fullmatch(kid):
                raise KeyringError(f"key {position}: the id must be 1-32 characters of A-Z a-z 0-9 _ -")
            if kid in self._aead:
                raise KeyringError(f"key {position}: duplicate key id")
            if len(key) != KEY_BYTES:
                raise KeyringError(f"key {position}: a key must be {KEY_BYTES} bytes, got {len(key)}")
            self._aead[kid] = AESGCM(key.reveal())
        self._ids = tuple(kid for kid, _ in keys)
        self._primary = keys[0][1]  # only for derive(): sub-keys bound to one purpose each
        self.ephemeral = ephemeral

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, *, source: str = ENV_VAR) -> Keyring:
        """Parse ``ID:BASE64[,ID:BASE64...]`` or one bare base64 key (id ``k1``)."""
        entries = text.split(",")
        keys: list[tuple[str, Secret]] = []
        seen: dict[str, int] = {}
        for position, raw in enumerate(entries, start=1):
            entry = raw.strip()
            if not entry:
                raise KeyringError(f"{source}: entry {position} is empty")
            # The base64 alphabets contain no ':', so the split is unambiguous.
            kid, sep, encoded = entry.partition(":")
            if not sep:
                if len(entries) > 1:
                    raise KeyringError(f"{source}: entry {position} has no 'ID:' prefix (needed with >1 key)")
                kid, encoded = _BARE_ID, entry
            if not _KID_RE.fullmatch(kid):
                # SECURITY: the "id" may be a key pasted in the wrong order: never echo it.
                raise KeyringError(
                    f"{source}: entry {position}: the id must be 1-32 characters of A-Z a-z 0-9 _ -"
                )
            if kid in seen:
                raise KeyringError(f"{source}: entry {position} repeats the key id of entry {seen[kid]}")
            seen[kid] = position
            key = _b64decode_key(encoded)
            if key is None:
                raise KeyringError(f"{source}: entry {position} is not valid base64")
            if len(key) != KEY_BYTES:
                raise KeyringError(
                    f"{source}: entry {position} decodes to {len(key)} bytes; keys must be {KEY_BYTES} "
                    "random bytes (e.g. `openssl rand -base64 32`)"
                )
            keys.append((kid, Secret(key)))
        return cls(keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, demo: bool = False) -> Keyring:
        """The keyring from ``$SHOPINO_GATEWAY_MASTER_KEY``; in demo mode a missing key yields a
        random ephemeral one (secrets stored with it die with the process)."""
        text = environ.get(ENV_VAR, "").strip()
        if not text:
            if demo:
                return cls.generate()
            raise KeyringError(
                f"${ENV_VAR} is not set: it must hold 32 random bytes in base64 "
                "(e.g. `openssl rand -base64 32`), or ID:BASE64 entries separated by commas"
            )
        return cls.parse(text)

    @classmethod
    def generate(cls, kid: str = _BARE_ID) -> Keyring:
        """A keyring with one fresh random key, flagged ephemeral."""
        return cls([(kid, Secret(AESGCM.generate_key(bit_length=256)))], ephemeral=True)

    # -- inspection ----------------------------------------------------------------------------
    @property
    def primary_id(self) -> str:
        return self._ids[0]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return self._ids

    def __repr__(self) -> str:
        return f"Keyring(ids={list(self._ids)!r}, ephemeral={self.ephemeral})"

    def derive(self, info: bytes, length: int = 32) -> Secret:
        """A key for one purpose (``info``), derived from the primary key with HKDF-SHA256; a
        derived key reveals nothing about the master key or any other purpose's key."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info)
        return Secret(hkdf.derive(self._primary.reveal()))

    # -- encryption ----------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes, *, context: bytes) -> bytes:
        kid = self.primary_id
        header = _VERSION + b"." + kid.encode() + b"."
        nonce = os.urandom(NONCE_BYTES)
        # SECURITY: context is associated data: a value only decrypts for the purpose, tenant and
        # user it was written for, so a store writer cannot swap secrets between users. The header
        # is bound too, so the key id cannot be rewritten either.
        sealed = self._aead[kid].encrypt(nonce, plaintext, header + context)
        return header + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=")

    def decrypt(self, value: bytes, *, context: bytes) -> bytes:
        kid, header, body = self._split(value)
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptionError(f"value encrypted under key id {kid!r}, which is not in the keyring")
        try:
            raw = base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise DecryptionError("malformed encrypted value") from None
        if len(raw) < NONCE_BYTES + 16:
            raise DecryptionError("malformed encrypted value")
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], header + context)
        except InvalidTag:
            raise DecryptionError("value does not authenticate (wrong key or context, or tampered)") from None

    def key_id_of(self, value: bytes) -> str:
        return self._split(value)[0]

    def needs_rotation(self, value: bytes) -> bool:
        """True when ``value`` was encrypted under a key other than the primary."""
        return self.key_id_of(value) != self.primary_id

    def reencrypt(self, value: bytes, *, context: bytes) -> bytes:
        """``value`` under the primary key (unchanged when it already is)."""
        if not self.needs_rotation(value):
            return value
        return self.encrypt(self.decrypt(value, context=context), context=context)

    @staticmethod
    def _split(value: bytes) -> tuple[str, bytes, bytes]:
        parts = value.split(b".")
        if len(parts) != 3 or parts[0] != _VERSION:
            raise DecryptionError("malformed encrypted value")
        kid = parts[1].decode("ascii", "replace")
        if not _KID_RE.fullmatch(kid):
            raise DecryptionError("malformed encrypted value")
        return kid, parts[0] + b"." + parts[1] + b".", parts[2]


__all__ = [
    "ENV_VAR",
    "DecryptionError",
    "Keyring",
    "KeyringError",
    "Secret",
    "SecretBytes",
    "context",
]
