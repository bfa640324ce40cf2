"""Webhook signatures and rotating integration secrets (SPEC §10 webhooks, Appendix B; issue 4 item 6).

Routes with ``auth: webhook`` carry no JWT: the provider signs the *raw* request body with a
shared secret and the gateway checks that signature before forwarding the body byte-for-byte.

Schemes
-------
* ``woocommerce``: header ``X-WC-Webhook-Signature`` = base64(HMAC-SHA256(secret, raw body)).
* ``hmac``: a generic scheme for other providers (Daraz, GitHub-style senders): a configurable
  header (default ``X-Signature``), digest (sha256 or sha512), encoding (base64 or hex) and an
  optional literal prefix such as ``sha256=``.

``verify_signature`` is pure and never raises on attacker input: a missing, empty, duplicated,
oversized, wrongly prefixed or undecodable header is simply "not verified" (the route answers
401 without saying why).

Rotation
--------
The configured secret (``integrations.NAME.secret``) is the initial one. ``integrations rotate``
stores a new secret in the state store (hash ``integration-secrets``, field = integration name),
encrypted with the master keyring; the previous secret keeps verifying until ``previous_until``
(now + grace) so the provider can be re-configured without dropping webhooks. Once a rotation
is stored, the store wins over the configured secret. The stored JSON is
``{"current": b64, "previous": b64 | null, "previous_until": unix_ts}``; ``previous: null`` with
a future ``previous_until`` means "the configured secret" - that is what the first rotation
writes, so the initial secret never has to be copied into the store.

Only two secrets are ever valid: rotating again during a grace period drops the older one.
Two admins rotating the same integration at the same moment: the last write wins and the
other returned secret never verifies (the store has no compare-and-set; rotations are rare,
interactive operations, and the loser simply rotates again).

Every instance reads the secrets from an in-memory ``SyncedSnapshot`` (pub/sub on
``integration-secrets`` plus a periodic resync), so verification makes no store round trip.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import secrets as secrets_module
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway import crypto
from gateway.crypto import DecryptionError, Keyring
from gateway.errors import InvalidToken, NotReady, StoreUnavailable
from gateway.state.base import StateStore
from gateway.state.sync import SnapshotBacked, SyncedSnapshot

log = logging.getLogger(__name__)

INTEGRATIONS_HASH = "integration-secrets"
INTEGRATIONS_CHANNEL = "integration-secrets"
WOOCOMMERCE_HEADER = "X-WC-Webhook-Signature"
DEFAULT_HMAC_HEADER = "X-Signature"
DEFAULT_MAX_BODY = 1024 * 1024  # a webhook route's body bound without ``max_body`` (SPEC §10)
CHALLENGE = 'Signature realm="shopino-webhooks"'

_ALGORITHMS: Mapping[str, Callable[[], Any]] = {
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}
# A sha512 hex digest is 128 characters; anything far longer is an attack or garbage and is
# refused before any decoding work.
_MAX_HEADER_CHARS = 512
_B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# -- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntegrationConfig:
    """One ``integrations.NAME`` entry. ``secret`` never appears in the repr."""

    name: str
    scheme: Literal["woocommerce", "hmac"]
    secret: str = field(repr=False)
    rotation_grace: float = 86400.0
    header: str | None = None
    algorithm: str = "sha256"
    encoding: Literal["base64", "hex"] = "base64"
    prefix: str = ""

    def __post_init__(self) -> None:
        # Messages name the integration and the setting, never the secret's value.
        where = f"integrations.{self.name}"
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError("integration names must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if self.scheme not in ("woocommerce", "hmac"):
            raise ValueError(f"{where}.scheme must be woocommerce or hmac")
        if not isinstance(self.secret, str) or not self.secret:
            # SECURITY: an empty HMAC key makes every signature forgeable by anyone.
            raise ValueError(f"{where}.secret must not be empty")
        if not math.isfinite(self.rotation_grace) or self.rotation_grace < 0:
            raise ValueError(f"{where}.rotation_grace must be a non-negative duration")
        if self.scheme == "woocommerce":
            # The provider fixes all of these: allowing overrides would only allow mistakes.
            if self.header not in (None, WOOCOMMERCE_HEADER) or self.algorithm != "sha256":
                raise ValueError(f"{where}: the woocommerce scheme fixes header and algorithm")
            if self.encoding != "base64" or self.prefix:
                raise ValueError(f"{where}: the woocommerce scheme fixes encoding and prefix")
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"{where}.algorithm must be sha256 or sha512")
        if self.encoding not in ("base64", "hex"):
            raise ValueError(f"{where}.encoding must be base64 or hex")
        if self.header is not None and not _HEADER_NAME_RE.fullmatch(self.header):
            raise ValueError(f"{where}.header is not a valid header name")
        if not isinstance(self.prefix, str) or not self.prefix.isascii() or len(self.prefix) > 32:
            raise ValueError(f"{where}.prefix must be at most 32 ASCII characters")

    @property
    def signature_header(self) -> str:
        if self.scheme == "woocommerce":
            return WOOCOMMERCE_HEADER
        return self.header or DEFAULT_HMAC_HEADER

    @property
    def secret_bytes(self) -> bytes:
        """The configured secret as the HMAC key (UTF-8, as providers use the text they were given)."""
        return self.secret.encode("utf-8")

    def __repr__(self) -> str:
        return (
            f"IntegrationConfig(name={self.name!r}, scheme={self.scheme!r}, secret=<redacted>, "
            f"rotation_grace={self.rotation_grace!r}, header={self.signature_header!r}, "
            f"algorithm={self.algorithm!r}, encoding={self.encoding!r}, prefix={self.prefix!r})"
        )

    __str__ = __repr__


# -- verification --------------------------------------------------------------------------------
def _single_header(headers: Mapping[str, str], name: str) -> str | None:
    """The one value of header ``name`` (case-insensitive), or None when absent or repeated.

    ``items()`` yields every occurrence on a multidict (aiohttp) and every differently-cased
    key on a plain dict, so both kinds of duplicate are seen."""
    wanted = name.lower()
    found: str | None = None
    count = 0
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            count += 1
            found = value
    # SECURITY: two signatures are ambiguous (which one did an upstream check?): refuse both.
    if count != 1 or not isinstance(found, str):
        return None
    return found


def _decode_signature(config: IntegrationConfig, value: str, digest_size: int) -> bytes | None:
    value = value.strip()
    if not value or len(value) > _MAX_HEADER_CHARS or not value.isascii():
        return None
    if config.prefix:
        if not value.startswith(config.prefix):
            return None
        value = value[len(config.prefix) :]
    try:
        if config.encoding == "hex":
            # fullmatch first: bytes.fromhex would also accept embedded whitespace.
            if not _HEX_RE.fullmatch(value) or len(value) % 2:
                return None
            raw = bytes.fromhex(value)
        else:
            if not _B64_RE.fullmatch(value):
                return None
            raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == digest_size else None


def verify_signature(
    config: IntegrationConfig, secrets: Sequence[bytes], body: bytes, headers: Mapping[str, str]
) -> bool:
    """True when the request's signature header is a valid HMAC of the raw ``body`` under one of
    ``secrets``. Pure; never raises on attacker-controlled ``body`` or ``headers``."""
    value = _single_header(headers, config.signature_header)
    if value is None:
        return False
    digest = _ALGORITHMS[config.algorithm]
    given = _decode_signature(config, value, digest().digest_size)
    if given is None:
        return False
    verified = False
    for secret in secrets:
        if not secret:
            continue  # SECURITY: an empty key would let anyone sign; never treat it as valid
        expected = hmac.new(secret, body, digest).digest()
        # SECURITY: constant-time comparison, so response timing leaks no prefix of the expected
        # signature. Every candidate is checked (no early exit) so timing also hides which matched.
        verified |= hmac.compare_digest(expected, given)
    return verified


def invalid_signature() -> InvalidToken:
    """The one refusal of a webhook whose signature does not verify (the reason is not told)."""
    return InvalidToken("The webhook signature is not valid", headers={"WWW-Authenticate": CHALLENGE})


# -- rotating secrets ----------------------------------------------------------------------------
class IntegrationSecretsUnavailable(NotReady):
    """The stored secrets were never loaded: we cannot tell whether the configured secret has been
    rotated away (perhaps because it leaked), so webhooks are refused with 503 (providers retry)."""

    title = "Integration secrets not loaded"


@dataclass(frozen=True)
class _Record:
    current: bytes = field(repr=False)
    previous: bytes | None = field(repr=False)  # None: the configured secret
    previous_until: float


# name -> record; None marks a stored value that does not decrypt or parse (fail closed).
Snapshot = Mapping[str, _Record | None]


def _context(name: str) -> bytes:
    # SECURITY: binds the ciphertext to its integration, so a store writer cannot copy one
    # integration's secret record onto another's field.
    return crypto.context("integration-secret", name)


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _encode(record: _Record) -> bytes:
    return orjson.dumps(
        {
            "current": _b64(record.current),
            "previous": None if record.previous is None else _b64(record.previous),
            "previous_until": record.previous_until,
        }
    )


def _decode(raw: bytes) -> _Record:
    """Parse a decrypted record; ``ValueError`` for anything malformed."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("record is not an object")
    current, previous, until = data.get("current"), data.get("previous"), data.get("previous_until")
    if not isinstance(current, str) or not (previous is None or isinstance(previous, str)):
        raise ValueError("record has malformed secrets")
    if isinstance(until, bool) or not isinstance(until, int | float) or not math.isfinite(until):
        raise ValueError("record has a malformed previous_until")
    try:
        current_bytes = base64.b64decode(current, validate=True)
        previous_bytes = None if previous is None else base64.b64decode(previous, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("record has malformed secrets") from None
    if not current_bytes:
        raise ValueError("record has an empty secret")
    return _Record(current_bytes, previous_bytes, float(until))


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError("integration names must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return name


class IntegrationSecrets(SnapshotBacked):
    """The rotating secret set of every integration: written to the store (encrypted), read from
    an in-memory snapshot kept fresh by pub/sub."""

    def __init__(
        self,
        store: StateStore,
        keyring: Keyring,
        *,
        clock: Callable[[], float] = time.time,
        resync: float = 30.0,
        retry: float = 1.0,
    ) -> None:
        self._store, self._keyring, self._clock = store, keyring, clock
        self._snapshot: SyncedSnapshot[Snapshot] = SyncedSnapshot(
            store, INTEGRATIONS_CHANNEL, self.load, resync=resync, retry=retry
        )

    def __repr__(self) -> str:
        return f"IntegrationSecrets(store={self._store!r}, loaded={self.loaded})"

    # -- the hot path --------------------------------------------------------------------------
    def secrets_for(self, name: str, configured: bytes) -> list[bytes]:
        """The secrets a webhook for ``name`` may be signed with right now, newest first. Memory
        only. Raises ``IntegrationSecretsUnavailable`` before the first successful load."""
        snapshot = self._snapshot.value
        if snapshot is None or not self._snapshot.loaded:
            # SECURITY: fail closed - until the store was read, the configured secret may be one
            # that was rotated away because it leaked.
            raise IntegrationSecretsUnavailable("integration secrets not loaded yet")
        if name not in snapshot:
            return [configured]
        record = snapshot[name]
        if record is None:
            return []  # SECURITY: an unreadable record verifies nothing (logged at load)
        result = [record.current]
        if self._clock() < record.previous_until:
            result.append(configured if record.previous is None else record.previous)
        return result

    def verify(self, config: IntegrationConfig, body: bytes, headers: Mapping[str, str]) -> bool:
        """``verify_signature`` under the secrets ``config``'s integration accepts right now.
        Raises ``IntegrationSecretsUnavailable`` before the first successful load."""
        return verify_signature(config, self.secrets_for(config.name, config.secret_bytes), body, headers)

    # -- writing -------------------------------------------------------------------------------
    async def rotate(self, name: str, new_secret: bytes | None, grace: float) -> bytes:
        """Make ``new_secret`` (or a generated one) the current secret of ``name``; the secret it
        replaces keeps verifying for ``grace`` seconds. Returns the new secret (to show once).
        ``ValueError`` for a bad name, secret or grace; ``StoreUnavailable`` when the store is
        down (nothing changed then; retrying is safe)."""
        _check_name(name)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not math.isfinite(grace):
            raise ValueError("grace must be a finite number of seconds")
        if grace < 0:
            raise ValueError("grace must not be negative")
        if new_secret is None:
            new_secret = secrets_module.token_urlsafe(32).encode("ascii")
        elif not isinstance(new_secret, bytes | bytearray) or not new_secret:
            raise ValueError("the new secret must be non-empty bytes")  # never echo the value
        new_secret = bytes(new_secret)

        now = self._clock()
        # Read the store, not the snapshot: another instance may have rotated a moment ago.
        stored = await self._store.hget(INTEGRATIONS_HASH, name)
        if stored is None:
            # First rotation: the configured secret is the previous one (see module docstring).
            record = _Record(new_secret, None, now + grace)
        else:
            try:
                old = _decode(self._keyring.decrypt(stored, context=_context(name)))
            except (DecryptionError, ValueError):
                # The old secret is unknown, so nothing can get a grace period; in particular
                # not the configured secret, which may have been rotated away long ago.
                log.warning("integration %s: stored secret unreadable, replaced without grace", name)
                record = _Record(new_secret, None, now)
            else:
                record = _Record(new_secret, old.current, now + grace)

        value = self._keyring.encrypt(_encode(record), context=_context(name))
        await self._store.hset(INTEGRATIONS_HASH, name, value)
        # This instance sees its own rotation at once, without waiting for its subscription.
        current = self._snapshot.value
        if current is not None:
            self._snapshot.value = {**current, name: record}
        try:
            await self._store.publish(INTEGRATIONS_CHANNEL, name.encode())
        except StoreUnavailable:
            # Stored already; other instances pick it up at their next resync.
            log.warning("integration %s: rotation stored but not announced (store unavailable)", name)
        return new_secret

    async def load(self) -> Snapshot:
        """Read and decrypt every stored record (the ``SyncedSnapshot`` loader). Raises
        ``StoreUnavailable`` when the store is down."""
        stored = await self._store.hgetall(INTEGRATIONS_HASH)
        snapshot: dict[str, _Record | None] = {}
        for name, value in stored.items():
            try:
                snapshot[name] = _decode(self._keyring.decrypt(value, context=_context(name)))
            except (DecryptionError, ValueError):
                # SECURITY: fail closed for this integration rather than falling back to the
                # configured secret; the message names the integration only.
                log.error(
                    "integration %s: stored secret does not decrypt or parse; refusing its webhooks", name
                )
                snapshot[name] = None
        return snapshot


__all__ = [
    "DEFAULT_HMAC_HEADER",
    "INTEGRATIONS_CHANNEL",
    "INTEGRATIONS_HASH",
    "WOOCOMMERCE_HEADER",
    "IntegrationConfig",
    "IntegrationSecrets",
    "IntegrationSecretsUnavailable",
    "verify_signature",
]
