"""The gateway's own ES256 signing keys (SPEC §6): persisted encrypted, rotated, published.

Storage: hash ``signing-keys``, field = kid, value = the keyring-encrypted JSON record
``{"kid", "pem", "created_at", "not_after", "revoked"}`` (associated data binds the record to
its kid). ``not_after`` is the end of the key's verification window, set by a rotation to
"now + token_ttl" so tokens already issued keep verifying until they expire; ``revoked`` (a
rotation with ``revoke_old``, for an exposed key) ends it at once.

Every instance holds the keys in memory; ``key_for`` and ``sign`` never touch the store.
Writers publish on ``SIGNING_KEYS_CHANNEL``; ``start()`` runs a ``SyncedSnapshot`` that
reloads on every message, so each instance sees a rotation within a second.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.crypto import DecryptionError, Keyring, KeyringError, context
from gateway.errors import StoreUnavailable
from gateway.state.base import StateStore
from gateway.state.sync import SyncedSnapshot

SIGNING_KEYS_CHANNEL = "signing-keys"
SIGNING_KEYS_HASH = "signing-keys"
CREATION_LOCK = "signing-keys:create-lock"
ALGORITHM = "ES256"
ALGORITHMS: tuple[str, ...] = (ALGORITHM,)
Candidates = tuple[tuple[ec.EllipticCurvePublicKey, tuple[str, ...]], ...]  # a KeySource answer
_LOCK_TTL = 10.0
_CREATE_WAIT = 15.0  # longer than the lock ttl: a crashed creator's lock expires meanwhile
_UNKNOWN_KID_RELOAD_EVERY = 1.0  # bounded store load from tokens with made-up kids

log = logging.getLogger(__name__)


@dataclass(frozen=True, repr=False)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    created_at: float
    serial: int = 1  # orders keys even when created within one clock tick
    not_after: float | None = None
    revoked: bool = False

    @functools.cached_property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        # Cached: the verifier compares it by identity on every cached-token check (hot path).
        return self.private_key.public_key()

    @functools.cached_property
    def candidates(self) -> Candidates:
        # One answer object per key: the verifier recognises an unchanged key by identity.
        return ((self.public_key, ALGORITHMS),)

    def verifiable_at(self, now: float) -> bool:
        return not self.revoked and (self.not_after is None or now < self.not_after)

    def __repr__(self) -> str:  # SECURITY: never the private key
        return f"SigningKey(kid={self.kid!r}, created_at={self.created_at}, revoked={self.revoked})"


def _newness(key: SigningKey) -> tuple[int, float, str]:
    return key.serial, key.created_at, key.kid


def _record_context(kid: str) -> bytes:
    return context("signing-key", kid)


def _encode(key: SigningKey, keyring: Keyring) -> bytes:
    # SECURITY: the unencrypted PEM exists only inside this call; the store sees ciphertext.
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    record = {
        "kid": key.kid,
        "pem": pem.decode("ascii"),
        "created_at": key.created_at,
        "serial": key.serial,
        "not_after": key.not_after,
        "revoked": key.revoked,
    }
    return keyring.encrypt(orjson.dumps(record), context=_record_context(key.kid))


def _decode(kid: str, value: bytes, keyring: Keyring) -> SigningKey:
    try:
        record = orjson.loads(keyring.decrypt(value, context=_record_context(kid)))
    except DecryptionError as exc:
        raise KeyringError(f"signing key {kid!r} cannot be decrypted with the master key: {exc}") from None
    private = serialization.load_pem_private_key(record["pem"].encode("ascii"), password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise KeyringError(f"signing key {kid!r} is not a P-256 key")
    return SigningKey(
        kid,
        private,
        float(record["created_at"]),
        int(record["serial"]),
        record["not_after"],
        bool(record["revoked"]),
    )


class SigningKeys:
    """Load, use, rotate and publish the gateway's signing keys."""

    def __init__(
        self, store: StateStore, keyring: Keyring, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store, self._keyring, self._clock = store, keyring, clock
        self._keys: dict[str, SigningKey] = {}
        self._snapshot: SyncedSnapshot[dict[str, SigningKey]] | None = None
        self._last_miss_reload = -_UNKNOWN_KID_RELOAD_EVERY

    # -- loading -------------------------------------------------------------------------------
    async def load(self) -> dict[str, SigningKey]:
        """Read every key from the store, creating the first one when there is none usable.
        Safe to run on many instances at once: exactly one of them creates it."""
        keys = await self._read()
        if not self._usable(keys):
            keys = await self._create_first()
        self._keys = keys
        return keys

    async def _read(self) -> dict[str, SigningKey]:
        raw = await self._store.hgetall(SIGNING_KEYS_HASH)
        return {kid: _decode(kid, value, self._keyring) for kid, value in raw.items()}

    def _usable(self, keys: Mapping[str, SigningKey]) -> bool:
        return any(not key.revoked for key in keys.values())

    async def _create_first(self) -> dict[str, SigningKey]:
        deadline = time.monotonic() + _CREATE_WAIT
        while True:
            # SECURITY: one creator at a time, else two instances starting together would each
            # sign with a key the other has not loaded yet.
            if await self._store.set(CREATION_LOCK, b"1", ttl=_LOCK_TTL, only_if_absent=True):
                try:
                    keys = await self._read()  # someone may have created it before we got the lock
                    if not self._usable(keys):
                        key = self._new_key(keys)
                        await self._store.hset(SIGNING_KEYS_HASH, key.kid, _encode(key, self._keyring))
                        keys[key.kid] = key
                        await self._publish()
                    return keys
                finally:
                    await self._store.delete(CREATION_LOCK)
            await asyncio.sleep(0.05)
            keys = await self._read()
            if self._usable(keys):
                return keys
            if time.monotonic() > deadline:
                raise StoreUnavailable("Timed out waiting for another instance to create a signing key")

    def _new_key(self, existing: Mapping[str, SigningKey]) -> SigningKey:
        serial = max((key.serial for key in existing.values()), default=0) + 1
        return SigningKey(
            secrets.token_hex(8), ec.generate_private_key(ec.SECP256R1()), self._clock(), serial
        )

    async def start(self, *, resync: float = 30.0) -> None:
        """Keep the keys fresh: reload on every message on the channel, and every ``resync`` s."""
        if self._snapshot is None:
            self._snapshot = SyncedSnapshot(self._store, SIGNING_KEYS_CHANNEL, self.load, resync=resync)
            await self._snapshot.start()

    async def stop(self) -> None:
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None:
            await snapshot.stop()

    @property
    def loaded(self) -> bool:
        """True once the keys were read (or created) at least once."""
        return self._snapshot is not None and self._snapshot.loaded

    async def wait_loaded(self, timeout: float | None = None) -> None:
        if self._snapshot is not None:
            await self._snapshot.wait_loaded(timeout)

    # -- use -----------------------------------------------------------------------------------
    @property
    def active(self) -> SigningKey:
        """The newest non-revoked key: the one that signs."""
        candidates = [key for key in self._keys.values() if not key.revoked]
        if not candidates:
            raise RuntimeError("signing keys not loaded")
        return max(candidates, key=_newness)

    def sign(self, claims: Mapping[str, Any]) -> str:
        key = self.active
        return jwt.encode(dict(claims), key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})

    def verifiable(self) -> list[SigningKey]:
        """Keys whose tokens are still accepted, newest first."""
        now = self._clock()
        keys = [key for key in self._keys.values() if key.verifiable_at(now)]
        return sorted(keys, key=_newness, reverse=True)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """``/.well-known/jwks.json``: public keys of every key still in its verification window."""
        entries = []
        for key in self.verifiable():
            jwk = ECAlgorithm.to_jwk(key.public_key, as_dict=True)
            assert isinstance(jwk, dict)
            entries.append({**jwk, "kid": key.kid, "alg": ALGORITHM, "use": "sig"})
        return {"keys": entries}

    async def key_for(self, kid: str | None) -> Candidates:
        """The KeySource protocol of the JWT verifier: ``[(public key, ("ES256",))]`` for a kid
        that is still verifiable, ``[]`` otherwise (revoked, retired or unknown)."""
        key = self._find(kid)
        if key is None and kid not in self._keys:
            # A key rotated in on another instance moments ago may not have reached us yet.
            # SECURITY: throttled, so tokens with random kids cannot hammer the store.
            now = time.monotonic()
            if now - self._last_miss_reload >= _UNKNOWN_KID_RELOAD_EVERY:
                self._last_miss_reload = now
                try:
                    await self.load()
                except StoreUnavailable:
                    log.warning("signing keys: store unavailable while looking up an unknown kid")
                key = self._find(kid)
        return () if key is None else key.candidates

    def known_keys(self, kid: str | None) -> Candidates | None:
        key = self._find(kid) if kid is not None else None
        return None if key is None else key.candidates  # None: key_for may reload

    def _find(self, kid: str) -> SigningKey | None:
        key = self._keys.get(kid)
        return key if key is not None and key.verifiable_at(self._clock()) else None

    # -- rotation ------------------------------------------------------------------------------
    async def rotate(self, *, revoke_old: bool, token_ttl: float) -> SigningKey:
        """Add a new signing key. Older keys stay verifiable for ``token_ttl`` seconds (the
        lifetime of tokens they signed), or stop at once with ``revoke_old``."""
        if token_ttl < 0:
            raise ValueError("token_ttl must not be negative")
        now = self._clock()
        keys = await self._read()
        new = self._new_key(keys)
        # The new key is written first: there is never a moment without a usable key.
        await self._store.hset(SIGNING_KEYS_HASH, new.kid, _encode(new, self._keyring))
        dead = []
        for key in keys.values():
            if not key.verifiable_at(now):
                dead.append(key.kid)  # already out of every JWKS: tidy it away
                continue
            if revoke_old:
                changed = replace(key, revoked=True)
            else:
                retire = now + token_ttl
                if key.not_after is not None:  # an earlier rotation's window only ever shrinks
                    retire = min(retire, key.not_after)
                changed = replace(key, not_after=retire)
            await self._store.hset(SIGNING_KEYS_HASH, key.kid, _encode(changed, self._keyring))
        if dead:
            await self._store.hdel(SIGNING_KEYS_HASH, *dead)
        await self._publish()
        await self.load()
        return new

    async def reencrypt(self) -> int:
        """Rewrite records not encrypted under the primary master key; returns how many."""
        count = 0
        for kid, value in (await self._store.hgetall(SIGNING_KEYS_HASH)).items():
            if self._keyring.needs_rotation(value):
                fresh = self._keyring.reencrypt(value, context=_record_context(kid))
                await self._store.hset(SIGNING_KEYS_HASH, kid, fresh)
                count += 1
        return count

    async def _publish(self) -> None:
        await self._store.publish(SIGNING_KEYS_CHANNEL, b"changed")


__all__ = [
    "ALGORITHMS",
    "SIGNING_KEYS_CHANNEL",
    "SIGNING_KEYS_HASH",
    "SigningKey",
    "SigningKeys",
]
