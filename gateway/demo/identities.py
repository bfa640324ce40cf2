"""Demo tenants and users: who can log in to the demo ERP, with which roles.

The passwords are published on purpose (the demo prints them), but user objects still hold only
a salted scrypt hash, so the demo exercises the same verification path a real ERP would, and a
stray ``repr()`` or log line never shows a password or TOTP secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import pyotp

ACME = "acme"
GLOBEX = "globex"
SUPPORT_TENANT = "shopino-support"
#: Tenants that own ERP data; the support team's home tenant owns none.
DEMO_TENANTS: tuple[str, ...] = (ACME, GLOBEX)

#: Published demo credentials (printed by ``shopino-gateway demo``). Shell-safe on purpose so
#: the printed ``curl`` commands can be pasted as they are.
DEMO_PASSWORDS: Mapping[str, str] = {
    "alice": "mango-lassi-42",
    "bob": "cricket-bat-17",
    "carol": "jute-weaver-88",
    "sam": "support-desk-05",
}

# scrypt cost: n=2**14, r=8 (16 MiB, tens of ms) — the usual interactive-login setting; high
# enough to be honest about password storage, low enough that tests and the demo start fast.
_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_LEN = 32


def canonical_username(name: str) -> str:
    """NFKC, case-folded, trimmed: the same canonical form the gateway's login counters use, so
    ``Alice`` and ``alice`` are one account here and one counter there."""
    return unicodedata.normalize("NFKC", name).casefold().strip()


@dataclass(frozen=True)
class PasswordHash:
    """A salted scrypt hash with its parameters (so costs can change without breaking old
    hashes)."""

    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    n: int = _SCRYPT_N
    r: int = _SCRYPT_R
    p: int = _SCRYPT_P

    @classmethod
    def create(cls, password: str) -> PasswordHash:
        salt = secrets.token_bytes(16)
        return cls(salt=salt, digest=_scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P))

    def verify(self, password: str) -> bool:
        candidate = _scrypt(password, self.salt, self.n, self.r, self.p)
        # compare_digest: the comparison itself must not leak how many bytes matched.
        return hmac.compare_digest(candidate, self.digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_SCRYPT_LEN,
        maxmem=256 * n * r,  # scrypt needs ~128*n*r; headroom so stored higher costs still verify
    )


@dataclass(frozen=True)
class DemoUser:
    """One ERP account. ``username`` doubles as the token ``sub``."""

    username: str
    tenant: str
    roles: tuple[str, ...]
    display_name: str
    password_hash: PasswordHash = field(repr=False)
    totp_secret: str = field(repr=False)

    @property
    def sub(self) -> str:
        return self.username

    def check_password(self, password: str) -> bool:
        return self.password_hash.verify(password)

    def totp(self) -> pyotp.TOTP:
        """RFC 6238 defaults (SHA-1, 6 digits, 30 s), as authenticator apps and the gateway use."""
        return pyotp.TOTP(self.totp_secret)

    def provisioning_uri(self, issuer_name: str = "Shopino demo") -> str:
        return self.totp().provisioning_uri(name=f"{self.username}@{self.tenant}",
                                            issuer_name=issuer_name)


# (username, tenant, roles, display name)
_DEFAULT_ACCOUNTS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("alice", ACME, ("tenant-admin", "finance"), "Alice Qureshi"),
    ("bob", ACME, ("inventory",), "Bob Rahman"),
    ("carol", GLOBEX, ("tenant-admin", "finance"), "Carol Haque"),
    ("sam", SUPPORT_TENANT, ("support",), "Sam Mirza (Shopino support)"),
)


def make_user(
    username: str, tenant: str, roles: Iterable[str], password: str, *,
    display_name: str | None = None, totp_secret: str | None = None,
) -> DemoUser:
    """Build one user, hashing ``password`` (which is not kept)."""
    return DemoUser(
        username=canonical_username(username), tenant=tenant, roles=tuple(roles),
        display_name=display_name or username, password_hash=PasswordHash.create(password),
        totp_secret=totp_secret or pyotp.random_base32(),
    )


def default_users(totp_secrets: Mapping[str, str] | None = None) -> tuple[DemoUser, ...]:
    """alice, bob (acme), carol (globex) and sam (support), with passwords from
    :data:`DEMO_PASSWORDS` and fresh TOTP secrets unless ``totp_secrets`` names them (e.g. to
    keep enrolled authenticators working across demo restarts)."""
    given = totp_secrets or {}
    return tuple(
        make_user(name, tenant, roles, DEMO_PASSWORDS[name], display_name=display,
                  totp_secret=given.get(name))
        for name, tenant, roles, display in _DEFAULT_ACCOUNTS
    )


class UserDirectory:
    """Lookup by canonical username; iteration in the order users were given."""

    def __init__(self, users: Iterable[DemoUser]) -> None:
        self._users: dict[str, DemoUser] = {}
        for user in users:
            key = canonical_username(user.username)
            if key in self._users:
                raise ValueError(f"duplicate demo user {key!r}")
            self._users[key] = user

    def get(self, username: str) -> DemoUser | None:
        return self._users.get(canonical_username(username))

    def __iter__(self) -> Iterator[DemoUser]:
        return iter(self._users.values())

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return f"UserDirectory({', '.join(self._users)})"
