"""What a rule counts: ``ip``, ``user``, ``tenant``, ``route``, ``header:NAME``, ``body:FIELD``.

The key grammar lives here once: ``key_error`` says why a config key is not valid (the config
schema reports it with its key path), ``KeySpec.parse`` turns a valid one into what the stages
apply, and both split a key with ``split_key``.

Every value is hashed (keyed BLAKE2b) before it becomes part of a store key, so usernames,
API keys and e-mail addresses never sit in Redis in clear text, and a value of any length or
alphabet makes a key of fixed shape. The hashing key is derived from the master key, so every
instance sharing a Redis derives the same one.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.bounded_memo import remember
from gateway.crypto import Keyring
from gateway.facts import RequestFacts

HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")  # an RFC 9110 token
FIELD_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
PRE_AUTH_KEYS = ("ip", "route")  # nothing else is known before authentication
_PLAIN_KEYS = ("ip", "user", "tenant", "route")
ABSENT = "-"  # one shared bucket for requests lacking the header or field (never a free pass)
# The kinds whose value ``KeySpec.raw_value`` reads from the verified identity alone — the
# user, the acting tenant and the token's issuer — and from nothing else of the request: items
# counting only these count the same values for every request of one identity
# (``policies.identity_checks``).
IDENTITY_KINDS = frozenset(("user", "tenant"))
# The kind whose value ``raw_value`` reads from the client's address alone (``facts.client_ip``,
# through ``ip_subject``): items counting only it count one value per address
# (``policies.address_checks``).
ADDRESS_KIND = "ip"
_HKDF_INFO = b"shopino-gateway rate-limit keys"


def split_key(key: str) -> tuple[str, str]:
    """A rule key's kind and, for ``header:NAME`` and ``body:FIELD``, its name (as written)."""
    kind, _, name = key.partition(":")
    return kind, name


def key_error(key: str, *, pre_auth: bool) -> str | None:
    """Why ``key`` is not a valid rule key, or None."""
    if pre_auth:
        if key in PRE_AUTH_KEYS or key.startswith("header:"):
            return _name_error(key)
        return "pre_auth rules count by ip, route or header:NAME (no identity or body yet)"
    if key in _PLAIN_KEYS:
        return None
    if key.startswith(("header:", "body:")):
        return _name_error(key)
    return "expected ip, user, tenant, route, header:NAME or body:FIELD"


def _name_error(key: str) -> str | None:
    kind, name = split_key(key)
    if kind == "header" and not HEADER_NAME_RE.match(name):
        return "header:NAME needs a header name"
    if kind == "body" and not FIELD_NAME_RE.match(name):
        return "body:FIELD needs a field name (letters, digits, '_', '.', '-')"
    return None


def canonical_username(value: str) -> str:
    """SPEC §8: aliases of one account share one counter (fullwidth, capitals, padding)."""
    return unicodedata.normalize("NFKC", value).casefold().strip()


@functools.lru_cache(maxsize=65_536)  # bounded: client addresses are attacker-chosen
def ip_subject(ip: str) -> str:
    """What an ``ip`` rule and the per-IP lockout count: an IPv4 address (also when a dual-stack
    socket reports it as ``::ffff:a.b.c.d``), or an IPv6 client's /64. SECURITY: one IPv6
    subscriber holds a whole /64 (2^64 addresses); counted per address, every request could
    come from a fresh bucket."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def derive_hash_key(environ: Mapping[str, str] | None = None) -> bytes:
    """HKDF of the master key's primary entry; a fixed key when there is none (demo, tests), so
    counters and lockouts still line up across restarts — only the keyed-ness is lost then."""
    env = os.environ if environ is None else environ
    master = env.get("SHOPINO_GATEWAY_MASTER_KEY", "")
    if not master:
        return hashlib.sha256(_HKDF_INFO).digest()
    return Keyring.parse(master).derive(_HKDF_INFO).reveal()  # the keyring's one parser and HKDF


_HASH_MEMO_LIMIT = 4096  # values remembered (client IPs, users, tenants of the last moments)
_HASH_MEMO_LENGTH = 128  # longer values (a header key's) are hashed every time, never held


class ValueHasher:
    """Keyed BLAKE2b, 96 bits in hex: cheap (< 1 µs) and collision-safe for bucket keys. The
    hashes of recent short values are remembered: a flood from one IP, a busy user or tenant
    asks for the same one on every request."""

    __slots__ = ("_keyed", "memo")

    def __init__(self, key: bytes) -> None:
        # Keyed once: copying the keyed state skips the key block's compression per value.
        self._keyed = hashlib.blake2b(key=key[:64], digest_size=12)
        # value → its hash; read directly by policies.counted_checks (one dict lookup, no call
        # per item), written here only
        self.memo: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        memo = self.memo
        hashed = memo.get(value)
        if hashed is None:
            digest = self._keyed.copy()
            digest.update(value.encode("utf-8", "surrogatepass"))
            hashed = digest.hexdigest()
            if len(value) <= _HASH_MEMO_LENGTH:
                remember(memo, _HASH_MEMO_LIMIT, value, hashed)  # attacker-chosen values
        return hashed


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A parsed rule key; ``kind`` is ip|user|tenant|route|header|body, ``name`` the header or field."""

    kind: str
    name: str = ""

    @classmethod
    def parse(cls, key: str) -> KeySpec:
        """A key ``key_error`` accepted, as the stages apply it (header names in lower case)."""
        kind, name = split_key(key)
        return cls(kind, name.lower() if kind == "header" else name)

    @property
    def needs_body(self) -> bool:
        return self.kind == "body"

    def raw_value(self, facts: RequestFacts, fields: Mapping[str, Any] | None) -> str | None:
        """The value to count, ``ABSENT`` for a missing header/field, None when the rule does not
        apply (no user or tenant on an anonymous request: those are counted by ``ip``)."""
        kind = self.kind
        if kind == "ip":
            return ip_subject(facts.client_ip)  # SECURITY: the trusted_proxies rule, never a spoofable header
        if kind == "user":
            # SECURITY: a ``sub`` is unique only within its issuer; two tenants' IdPs may both
            # issue "42", and one must not exhaust (or share) the other's quota.
            claims = facts.claims
            if facts.user is None or claims is None:
                return facts.user
            return f"{claims.issuer}\x00{facts.user}"
        if kind == "tenant":
            return facts.tenant
        if kind == "route":
            return facts.route.name if facts.route is not None else ABSENT
        if kind == "header":
            return facts.request.headers.get(self.name, ABSENT)
        value = fields.get(self.name) if fields is not None else None
        if isinstance(value, str):
            return canonical_username(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return ABSENT
