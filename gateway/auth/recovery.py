"""One-time MFA recovery codes: generation, input normalisation and keyed hashing.

A code is 12 characters of Crockford's base32 alphabet (lower case, no i/l/o/u), shown as
``xxxx-xxxx-xxxx``: 60 bits from ``secrets``, typable from paper and tolerant of the usual
misreadings (``i``/``l`` read as ``1``, ``o`` as ``0``; dashes, spaces and case ignored).

Hashing: HMAC-SHA256 keyed with a random 32-byte per-user salt that is itself stored only
encrypted under the master key (inside the user's active MFA record). A fast keyed hash is
enough here because the codes are random, not chosen: an offline search of a 60-bit space is
~10^18 guesses per code even with the salt, and without the master key the salt - hence every
hash - is unusable. A slow hash (scrypt) protects low-entropy passwords; for these codes it
would add nothing but CPU per attempt, which an attacker could use to load the gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32
GROUPS = 3
GROUP_LENGTH = 4
CODE_LENGTH = GROUPS * GROUP_LENGTH
COUNT = 10
SALT_BYTES = 32
_MAX_INPUT = 64  # anything longer is not a code; bounds the work done on hostile input
_READ_AS = str.maketrans({"i": "1", "l": "1", "o": "0", "-": None, " ": None})


def generate(count: int = COUNT) -> list[str]:
    """``count`` fresh codes, formatted for display."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
        codes.append("-".join(raw[i : i + GROUP_LENGTH] for i in range(0, CODE_LENGTH, GROUP_LENGTH)))
    return codes


def normalize(text: object) -> str | None:
    """The canonical form of a typed code, or None when it cannot be one."""
    if not isinstance(text, str) or len(text) > _MAX_INPUT:
        return None
    cleaned = text.strip().lower().translate(_READ_AS)
    if len(cleaned) != CODE_LENGTH or any(char not in ALPHABET for char in cleaned):
        return None
    return cleaned


def digest(salt: bytes, normalized: str) -> str:
    """The stored form of a normalised code: hex HMAC-SHA256 under the user's salt."""
    return hmac.new(salt, normalized.encode("ascii"), hashlib.sha256).hexdigest()


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


__all__ = ["ALPHABET", "COUNT", "digest", "generate", "new_salt", "normalize"]
