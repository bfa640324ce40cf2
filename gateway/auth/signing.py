"""The gateway's own ES256 signing keys (SPEC §6): persisted encrypted, rotated, published.

Storage: hash ``signing-keys``, field = kid, value = the keyring-encrypted JSON record
``{"kid", "pem", "created_at", "not_after", "revoked"}`` (associated data binds the record to
its kid). ``not_after`` is the end of the key's verification window, set by a rotation to
"now + token_ttl" so tokens already issued keep verifying until they expire; ``revoked`` (a
rotation with ``revoke_old``, for an exposed key) ends it at once.

Every instance holds the keys in memory; ``key_for`` and ``sign`` never touch the store.
Writers publish on ``SIGNING_KEYS_CHANNEL``; ``start()`` runs a ``SyncedSnapshot`` that
reloads on every message, so each instance sees a rotation within a second.

Store reset (SPEC App. C): a rotation is a security write (``StoreGeneration.bump``), every
load is checked against the generation like the other snapshots, and what an instance knows of
a key's end is monotonic: a kid it holds as revoked (or with a verification window that ended)
never becomes usable again from a load, and a load that says otherwise is a store gone back
(reported; the keys in memory are kept). ``restore`` writes the keys held back, merging each
record with the stored one so that "revoked wins" and the earlier ``not_after`` wins.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from gateway.state.generation import StoreGeneration, StoreReset
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
_MERGE_TRIES = 20  # compare-and-set rounds per key in a write-back before giving up (retried)

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


@dataclass(frozen=True)
class _End:
    """What an instance knows of how a key's verification ends; only ever gets stricter."""

    revoked: bool = False
    not_after: float | None = None

    def stricter(self, revoked: bool, not_after: float | None) -> _End:
        ends = [t for t in (self.not_after, not_after) if t is not None]
        return _End(self.revoked or revoked, min(ends) if ends else None)

    def applied_to(self, key: SigningKey) -> SigningKey:
        end = self.stricter(key.revoked, key.not_after)
        if (end.revoked, end.not_after) == (key.revoked, key.not_after):
            return key
        return replace(key, revoked=end.revoked, not_after=end.not_after)


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
        self,
        store: StateStore,
        keyring: Keyring,
        *,
        clock: Callable[[], float] = time.time,
        generation: StoreGeneration | None = None,
    ) -> None:
        self._store, self._keyring, self._clock = store, keyring, clock
        self._generation = generation  # App. C: keys a reset store forgot stay as held here
        self._keys: dict[str, SigningKey] = {}
        # SECURITY: every kid's end as known here; kept after the kid leaves the store, so a
        # store rolled back to before a revocation cannot bring the key back (module docstring).
        self._ends: dict[str, _End] = {}
        self._snapshot: SyncedSnapshot[dict[str, SigningKey]] | None = None
        self._last_miss_reload = -_UNKNOWN_KID_RELOAD_EVERY
        self._loads_started = 0  # orders loads by start (see load)
        self._applied_load = 0
        self._rotations = 0  # local rotations so far: a load overlapping one is not applied

    # -- loading -------------------------------------------------------------------------------
    async def load(self) -> dict[str, SigningKey]:
        """Read every key from the store, creating the first one when there is none usable.
        Safe to run on many instances at once: exactly one of them creates it. ``StoreReset``
        (the keys in memory are kept) when the store forgot state this instance holds."""
        self._loads_started += 1
        started, rotations = self._loads_started, self._rotations
        since = self._generation.begin() if self._generation is not None else 0
        read = await self._read()
        if self._generation is not None:
            # SECURITY (App. C): a store back from before a rotation is not read as the truth.
            await self._generation.verify(since)
        if started < self._applied_load or rotations != self._rotations:
            # A load begun later was applied meanwhile, or a local rotation overlapped this
            # read: what it read may predate either (and is not a store that went back).
            return self._keys
        keys = self._held_ends(read)
        if not self._usable(keys):
            keys = self._with_ends(await self._create_first())
        self._applied_load = started
        self._apply(keys)
        return keys

    def _with_ends(self, read: Mapping[str, SigningKey]) -> dict[str, SigningKey]:
        """``read`` with every end known here applied (never less ended than known)."""
        return {
            kid: end.applied_to(key) if (end := self._ends.get(kid)) else key for kid, key in read.items()
        }

    def _held_ends(self, read: Mapping[str, SigningKey]) -> dict[str, SigningKey]:
        """``_with_ends(read)``; a stored key less ended than this instance knows it is a store
        that went back: reported, and ``StoreReset``."""
        keys = self._with_ends(read)
        if self._generation is not None and any(keys[kid] is not key for kid, key in read.items()):
            log.info("signing keys: a revoked or retired key came back from the store: store reset")
            self._generation.report("signing key revocation went back")
            raise StoreReset("signing key revocation went back")
        return keys

    def _apply(self, keys: dict[str, SigningKey]) -> None:
        for key in keys.values():
            self._learn(key)
        self._keys = keys

    def _learn(self, key: SigningKey) -> None:
        self._ends[key.kid] = self._ends.get(key.kid, _End()).stricter(key.revoked, key.not_after)

    async def reload(self) -> bool:
        """Load again (after a store reset's write-back); True on success."""
        try:
            await self.load()
        except StoreUnavailable:
            return False
        return True

    async def _read(self) -> dict[str, SigningKey]:
        raw = await self._store.hgetall(SIGNING_KEYS_HASH)
        return {kid: _decode(kid, value, self._keyring) for kid, value in raw.items()}

    def _usable(self, keys: Mapping[str, SigningKey]) -> bool:
        now = self._clock()
        return any(key.verifiable_at(now) for key in keys.values())

    async def _create_first(self) -> dict[str, SigningKey]:
        deadline = time.monotonic() + _CREATE_WAIT
        while True:
            # SECURITY: one creator at a time, else two instances starting together would each
            # sign with a key the other has not loaded yet.
            if await self._store.set(CREATION_LOCK, b"1", ttl=_LOCK_TTL, only_if_absent=True):
                try:
                    # Someone may have created it before we got the lock.
                    keys = self._with_ends(await self._read())
                    if not self._usable(keys):
                        key = self._new_key({**self._keys, **keys})
                        await self._store.hset(SIGNING_KEYS_HASH, key.kid, _encode(key, self._keyring))
                        keys[key.kid] = key
                        await self._publish()
                    return keys
                finally:
                    await self._store.delete(CREATION_LOCK)
            await asyncio.sleep(0.05)
            keys = self._with_ends(await self._read())
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
        """The newest key still verifiable: the one that signs."""
        now = self._clock()
        candidates = [key for key in self._keys.values() if key.verifiable_at(now)]
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
        key = self._find(kid) if kid is not None else None  # no kid names no key (as known_keys)
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
                key = self._find(kid) if kid is not None else None
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
        lifetime of tokens they signed), or stop at once with ``revoke_old``. A security write
        (App. C): counted, so a store that comes back from before it is seen to have gone back."""
        if token_ttl < 0:
            raise ValueError("token_ttl must not be negative")
        self._rotations += 1
        now = self._clock()
        # What this instance knows of each key's end counts too (a store that went back).
        keys = self._with_ends(await self._read())
        # Keys held here but missing from the store (a store reset not noticed yet) end here
        # too; with revoke_old they are written back revoked (always safe), otherwise only
        # memory changes (another instance may have tidied them away after ending them).
        held_only = {kid: key for kid, key in self._keys.items() if kid not in keys}
        new = self._new_key({**self._keys, **keys})  # its serial above every key held here too
        # The new key is written first: there is never a moment without a usable key.
        await self._store.hset(SIGNING_KEYS_HASH, new.kid, _encode(new, self._keyring))
        result = {new.kid: new}
        dead = []
        for key in [*keys.values(), *held_only.values()]:
            if not key.verifiable_at(now):
                if key.kid in keys:
                    dead.append(key.kid)  # already out of every JWKS: tidy it away
                self._learn(key)
                continue
            if revoke_old:
                changed = replace(key, revoked=True)
            else:
                retire = now + token_ttl
                if key.not_after is not None:  # an earlier rotation's window only ever shrinks
                    retire = min(retire, key.not_after)
                changed = replace(key, not_after=retire)
            if key.kid in keys or revoke_old:
                await self._store.hset(SIGNING_KEYS_HASH, key.kid, _encode(changed, self._keyring))
            result[key.kid] = changed
        if dead:
            await self._store.hdel(SIGNING_KEYS_HASH, *dead)
        # Enforced here at once, whatever a load says next (ends are monotonic).
        self._apply({**{k: v for k, v in self._keys.items() if k not in dead}, **result})
        self._rotations += 1
        if self._generation is not None:
            await self._generation.bump()  # a store that comes back without it has gone back
        await self._publish()
        with contextlib.suppress(StoreReset):  # a reset pending: memory stands until written back
            await self.load()
        return new

    async def restore(self) -> tuple[int, int]:
        """Write the keys held here back to a store that was reset: a key it lacks is added,
        and a stored key is made as ended as known here - revoked wins, the earlier
        ``not_after`` wins - each in one compare-and-set, so instances writing back at once
        with different views cannot un-revoke a key. Returns (held, written)."""
        held = dict(self._keys)
        stored = await self._store.hgetall(SIGNING_KEYS_HASH)
        kids = sorted(set(held) | {kid for kid in stored if kid in self._ends})
        written = 0
        for kid in kids:
            written += await self._merge_back(kid, held.get(kid))
        if written:
            with contextlib.suppress(StoreUnavailable):
                await self._publish()
        return len(held), written

    async def _merge_back(self, kid: str, key: SigningKey | None) -> int:
        end = self._ends.get(kid, _End())
        for _ in range(_MERGE_TRIES):
            raw = await self._store.hget(SIGNING_KEYS_HASH, kid)
            if raw is None:
                if key is None:
                    return 0  # ended and gone from the store: nothing to write
                merged = end.applied_to(key)
            else:
                current = _decode(kid, raw, self._keyring)
                merged = end.applied_to(current)
                if merged is current:
                    return 0  # the store already holds it at least as ended as known here
            value = _encode(merged, self._keyring)
            if await self._store.hash_compare_and_set(SIGNING_KEYS_HASH, kid, raw, value) == value:
                return 1
        raise StoreUnavailable("signing key write-back kept racing other writers")

    async def reencrypt(self) -> int:
        """Rewrite records not encrypted under the primary master key; returns how many."""
        count = 0
        for kid, value in (await self._store.hgetall(SIGNING_KEYS_HASH)).items():
            if self._keyring.needs_rotation(value):
                fresh = self._keyring.reencrypt(value, context=_record_context(kid))
                # Only over the record read: a revocation written meanwhile (a rotation, a
                # store reset's write-back) is never replaced by the older record; that newer
                # record is already under the primary key.
                if await self._store.hash_compare_and_set(SIGNING_KEYS_HASH, kid, value, fresh) == fresh:
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
