"""Audit anchors (SPEC Appendix C): the head of a tenant's chain, signed with the gateway's key.

The hash chain alone proves nothing against someone who can write to the store: edit a record,
recompute every later hash, and the chain is whole again. An anchor closes that gap. It is an
``audit.anchor`` record whose ``details`` carry a compact JWS (pyjwt, ES256, the gateway's
active signing key) over a *statement*:

    {"v": 1, "tenant", "seq", "hash", "time", "first", "digests", "previous"}

``seq``/``hash`` are the chain head the anchor vouches for (always the record just before the
anchor: it is built inside the chain lock); ``digests`` are the first ``DIGEST_CHARS`` hex
characters of the hash of every record from ``first`` to ``seq`` (from the previous anchor's own
record on, at most ``MAX_DIGESTS``), so a verifier that finds a rewritten chain can name the
first record that differs from what was signed, not only the anchor that caught it;
``previous`` is the seq of that previous anchor (``first``; 0 when the digests do not start at
one), so a removed anchor is named too. Detection rests on the full ``hash``; the rest only
localises.

Which keys are trusted: the public half of every key that ever signed an anchor is archived in
the store hash ``audit-anchor-keys``, sealed with the master keyring (AES-GCM, the kid as
associated data), so a store writer can neither add a key of their own nor move one to another
kid; deleting the archive makes every anchor unverifiable, which verify reports as broken. The
archive outlives signing-key rotation (``/.well-known/jwks.json`` serves only keys whose tokens
may still be valid); ``GET /admin/audit/jwks`` serves it for offline checks.

A key revoked by ``keys rotate --revoke-old`` (exposed) is marked in its sealed archive entry
with the time of the revocation (``revoked_at``, RFC 3339, ``REVOCATION_GRACE`` after the
rotation: other instances load the new key within a second by pub/sub, at worst at their 30 s
resync, and sign with the old one meanwhile): from then on its anchors count only
if they were signed (``signed_at``, inside the signature) before it, so it cannot vouch for
anything newer. The rotation re-anchors every trail with the new key at once. The JWKS keeps
such a key, marked with a ``revoked_at`` member, so exports signed before the revocation still
verify offline. An instance never forgets a revocation it has seen, even if the store forgets it.

Each instance also keeps the last anchor it wrote (or found on the head) for each tenant on
local disk (``LastAnchors``), and the newest one is also sealed in the store (``AnchorHeads``)
for instances that never saw it: a trail cut back to before that anchor, or that lost it,
which no record in the store can reveal, is then reported as truncated.

Nothing local is needed to catch a trail whose anchors were all removed: every head is signed
at least once per ``audit.anchor_every``, so a stored record older than ``unsigned_grace`` (two
periods plus a margin of one more period, at most ``UNSIGNED_MARGIN``: a record written just
after an anchor waits up to one period, the rest absorbs a slow or briefly failing anchoring
loop; 3 h 10 min with the default 1 h, 3 s with a test's 1 s) that no valid
anchor signs is reported as tampered on every instance. The gateway also never signs a head
whose history does not verify (``AuditTrail.anchor``), so a forger cannot get a rewrite signed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
import orjson
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from jwt.api_jws import PyJWS

from gateway.crypto import DecryptionError, Keyring, context
from gateway.state.base import StateStore

log = structlog.get_logger("gateway.audit")

ANCHOR_EVENT = "audit.anchor"
ANCHOR_TYP = "shopino-audit-anchor+jws"  # SECURITY: never mistaken for (or usable as) a token
ALGORITHM = "ES256"
ARCHIVE_HASH = "audit-anchor-keys"
DIGEST_CHARS = 8
MAX_DIGESTS = 1024
DEFAULT_PERIOD = 3600.0  # audit.anchor_every's default
REVOCATION_GRACE = 60.0  # s after a revocation: instances still signing with the old key
UNSIGNED_MARGIN = 600.0  # at most this on top of two periods before an unsigned record is suspect
_JWS = PyJWS()
_RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")  # format_time's


class AnchorInvalid(Exception):
    """An anchor that does not verify; the message names why (never key material)."""


class AnchorSigningKey(Protocol):
    @property
    def kid(self) -> str: ...
    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey: ...
    @property
    def public_key(self) -> ec.EllipticCurvePublicKey: ...


class ActiveKeySource(Protocol):
    """``gateway.auth.signing.SigningKeys``: the key that signs right now."""

    @property
    def active(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Statement:
    """What an anchor signs."""

    tenant: str
    seq: int
    hash: str
    time: str
    first: int
    digests: str
    previous: int = 0

    def payload(self) -> bytes:
        body = {
            "v": 1,
            "tenant": self.tenant,
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "first": self.first,
            "digests": self.digests,
            "previous": self.previous,
        }
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_payload(cls, raw: bytes) -> Statement:
        try:
            body = orjson.loads(raw)
            statement = cls(
                str(body["tenant"]),
                int(body["seq"]),
                str(body["hash"]),
                str(body["time"]),
                int(body["first"]),
                str(body["digests"]),
                int(body["previous"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise AnchorInvalid("the signed statement is malformed") from None
        if body.get("v") != 1 or len(statement.digests) != DIGEST_CHARS * statement.covered:
            raise AnchorInvalid("the signed statement is malformed")
        return statement

    @property
    def covered(self) -> int:
        return max(0, self.seq - self.first + 1)

    def digest_of(self, seq: int) -> str | None:
        if not self.first <= seq <= self.seq:
            return None
        start = (seq - self.first) * DIGEST_CHARS
        return self.digests[start : start + DIGEST_CHARS]


def digest(hash_: object) -> str:
    return (
        hash_[:DIGEST_CHARS] if isinstance(hash_, str) and len(hash_) >= DIGEST_CHARS else "-" * DIGEST_CHARS
    )


def sign(statement: Statement, key: AnchorSigningKey) -> dict[str, Any]:
    """The ``details`` of an anchor record for ``statement``."""
    token = _JWS.encode(
        statement.payload(), key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": ANCHOR_TYP}
    )
    return {
        "anchored_seq": statement.seq,
        "anchored_hash": statement.hash,
        "signed_at": statement.time,
        "kid": key.kid,
        "signature": token,
    }


class AnchorKeys:
    """Public keys trusted for anchors, by kid; ``revoked``: kid -> the RFC 3339 time from which
    that key vouches for nothing (anchors it signed at or after that time are refused)."""

    def __init__(
        self, keys: Mapping[str, ec.EllipticCurvePublicKey], revoked: Mapping[str, str] | None = None
    ) -> None:
        self._keys = dict(keys)
        self._revoked = {kid: at for kid, at in (revoked or {}).items() if kid in self._keys}

    def __len__(self) -> int:
        return len(self._keys)

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        return self._keys.get(kid)

    def signer_revoked_at(self, token: object) -> str | None:
        """When the key that signed ``token`` (verified already) was revoked, or None."""
        try:
            return self.revoked_at(_JWS.get_unverified_header(token).get("kid"))  # type: ignore[arg-type]
        except (jwt.PyJWTError, TypeError, ValueError):
            return None

    def revoked_at(self, kid: object) -> str | None:
        return self._revoked.get(kid) if isinstance(kid, str) else None

    @classmethod
    def from_jwks(cls, jwks: object) -> AnchorKeys:
        """Keys of a JWK Set (``{"keys": [...]}``); EC P-256 entries only. ValueError otherwise."""
        entries = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(entries, list):
            raise ValueError('a JWKS is a JSON object with a "keys" array')
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        revoked: dict[str, str] = {}
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                raise ValueError(f"keys[{index}]: not a JWK with a kid")
            if entry.get("kty") != "EC" or entry.get("crv") != "P-256":
                continue  # other keys may share the set; they never verify an anchor
            when = entry.get("revoked_at")
            if when is not None and not (isinstance(when, str) and _RFC3339_MS.fullmatch(when)):
                raise ValueError(f"keys[{index}]: revoked_at is not an RFC 3339 time")
            try:
                public = ECAlgorithm.from_jwk({k: v for k, v in entry.items() if k != "revoked_at"})
            except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
                raise ValueError(f"keys[{index}]: not a valid EC public key") from None
            if isinstance(public, ec.EllipticCurvePrivateKey):
                public = public.public_key()  # a JWK with "d": only its public half is needed
            keys[entry["kid"]] = public
            if when is not None:
                revoked[entry["kid"]] = when
        return cls(keys, revoked)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        entries = []
        for kid, public in sorted(self._keys.items()):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
            entry = {**jwk, "kid": kid, "alg": ALGORITHM, "use": "sig"}
            if kid in self._revoked:
                entry["revoked_at"] = self._revoked[kid]
            entries.append(entry)
        return {"keys": entries}

    def verify(self, token: object) -> Statement:
        """The statement ``token`` signs, or AnchorInvalid."""
        if not isinstance(token, str):
            raise AnchorInvalid("no signature")
        try:
            header = _JWS.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AnchorInvalid("the signature is not a JWS") from None
        if header.get("typ") != ANCHOR_TYP or header.get("alg") != ALGORITHM:
            raise AnchorInvalid("the signature is not an anchor signature")
        public = self._keys.get(header.get("kid"))  # type: ignore[arg-type]
        if public is None:
            raise AnchorInvalid("signed by an unknown key")
        try:
            # SECURITY: the algorithm is pinned; the header's alg only has to agree with it.
            decoded = _JWS.decode_complete(token, key=public, algorithms=[ALGORITHM])
        except jwt.PyJWTError:
            raise AnchorInvalid("the signature does not verify") from None
        statement = Statement.from_payload(decoded["payload"])
        revoked = self._revoked.get(header["kid"])
        # SECURITY: an exposed key vouches for nothing signed after its revocation.
        if revoked is not None and not statement.time < revoked:
            raise AnchorInvalid("signed by a revoked key after its revocation")
        return statement


def check_anchor_record(rec: Mapping[str, Any], keys: AnchorKeys) -> Statement:
    """Verify an anchor record's signature and that its readable fields say what it signs."""
    details = rec.get("details")
    if not isinstance(details, dict):
        raise AnchorInvalid("no details")
    statement = keys.verify(details.get("signature"))
    if (
        statement.tenant != rec.get("tenant")
        or details.get("anchored_seq") != statement.seq
        or details.get("anchored_hash") != statement.hash
    ):
        raise AnchorInvalid("its fields differ from the statement it signs")
    return statement


def _archive_context(kid: str) -> bytes:
    return context("audit-anchor-key", kid)


class AnchorKeyArchive:
    """Every public key that signed an anchor, sealed in the store (see module doc)."""

    def __init__(self, store: StateStore, keyring: Keyring) -> None:
        self._store, self._keyring = store, keyring
        self._archived: set[str] = set()
        self._revoked: dict[str, str] = {}  # never forgotten by this process (see module doc)

    def _seal(self, kid: str, public: ec.EllipticCurvePublicKey, revoked_at: str | None) -> bytes:
        entry = ECAlgorithm.to_jwk(public, as_dict=True)
        if revoked_at is not None:
            entry = {**entry, "revoked_at": revoked_at}
        return self._keyring.encrypt(orjson.dumps(entry), context=_archive_context(kid))

    async def ensure(self, key: AnchorSigningKey) -> None:
        """Archive ``key``'s public half before the first anchor it signs is written."""
        if key.kid in self._archived:
            return
        await self._store.hset(ARCHIVE_HASH, key.kid, self._seal(key.kid, key.public_key, None))
        self._archived.add(key.kid)

    def forget_cache(self) -> None:
        """The store may have lost the archive (a reset): check it again before the next anchor."""
        self._archived.clear()

    async def revoke(self, kids: Iterable[str], at: str) -> list[str]:
        """Mark ``kids`` revoked from ``at`` (RFC 3339) in their sealed entries; an earlier
        revocation stands. Returns the kids marked."""
        current = await self.load()
        marked = []
        for kid in kids:
            public = current.public_key(kid)
            if public is None:
                continue  # never signed an anchor: nothing it signed to distrust
            when = min(at, current.revoked_at(kid) or at)
            await self._store.hset(ARCHIVE_HASH, kid, self._seal(kid, public, when))
            self._revoked[kid] = min(when, self._revoked.get(kid, when))
            marked.append(kid)
        return marked

    async def load(self) -> AnchorKeys:
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        revoked: dict[str, str] = {}
        for kid, sealed in (await self._store.hgetall(ARCHIVE_HASH)).items():
            try:
                entry = orjson.loads(self._keyring.decrypt(sealed, context=_archive_context(kid)))
                when = entry.pop("revoked_at", None)
                public = ECAlgorithm.from_jwk(entry)
            except (DecryptionError, jwt.InvalidKeyError, orjson.JSONDecodeError, ValueError, AttributeError):
                # SECURITY: a key planted (or moved) by a store writer is ignored, so anchors it
                # "signed" are reported as signed by an unknown key.
                log.warning("audit.anchor_key_rejected", kid=kid)
                continue
            if isinstance(public, ec.EllipticCurvePublicKey):
                keys[kid] = public
                if isinstance(when, str):
                    revoked[kid] = when
        # SECURITY: a revocation this process saw stands even if the store lost it (rollback).
        for kid, when in self._revoked.items():
            revoked[kid] = min(when, revoked.get(kid, when))
        self._revoked.update({kid: when for kid, when in revoked.items()})
        return AnchorKeys(keys, revoked)


class LastAnchors:
    """The last anchor this instance wrote per tenant: ``<directory>/<tenant>.json``."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def path(self, tenant: str) -> Path:
        return self._dir / f"{tenant}.json"  # tenant ids are validated: no separators, no dot first

    def read(self, tenant: str) -> dict[str, Any] | None:
        try:
            value = json.loads(self.path(tenant).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            log.error("audit.last_anchor_unreadable", tenant=tenant)
            return None
        return value if isinstance(value, dict) else None

    def write(self, tenant: str, anchor: Mapping[str, Any]) -> None:
        """Keep ``anchor`` unless a newer one is already kept (workers share the directory)."""
        current = self.read(tenant)
        if current is not None and int(current.get("record_seq", 0)) >= int(anchor["record_seq"]):
            return
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.path(tenant)
        temporary = target.with_name(f".{tenant}.{os.getpid()}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(orjson.dumps(dict(anchor)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)  # atomic: a crash leaves the old anchor or the new one


HEADS_HASH = "audit-anchor-heads"


def _head_context(tenant: str) -> bytes:
    return context("audit-anchor-head", tenant)


class AnchorHeads:
    """The newest anchor per tenant, sealed in the store (hash ``audit-anchor-heads``): what
    ``LastAnchors`` keeps on one instance's disk, for every instance, a fresh one too. Sealed
    with the master keyring (the tenant as associated data), so a store writer cannot make one
    up or move one to another tenant; deleting it (or writing back an older one they copied)
    only falls back to the local copy and the age of the records."""

    def __init__(self, store: StateStore, keyring: Keyring) -> None:
        self._store, self._keyring = store, keyring

    async def read(self, tenant: str) -> dict[str, Any] | None:
        sealed = await self._store.hget(HEADS_HASH, tenant)
        if sealed is None:
            return None
        try:
            value = orjson.loads(self._keyring.decrypt(sealed, context=_head_context(tenant)))
        except (DecryptionError, orjson.JSONDecodeError):
            log.warning("audit.anchor_head_rejected", tenant=tenant)
            return None
        return value if isinstance(value, dict) else None

    async def write(self, tenant: str, anchor: Mapping[str, Any]) -> None:
        """Keep ``anchor`` unless a newer one is kept already."""
        current = await self.read(tenant)
        if current is not None and int(current.get("record_seq", 0)) >= int(anchor["record_seq"]):
            return
        sealed = self._keyring.encrypt(orjson.dumps(dict(anchor)), context=_head_context(tenant))
        await self._store.hset(HEADS_HASH, tenant, sealed)


def newest_anchor(*kept: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The kept anchor with the highest ``record_seq`` (the one that proves the most)."""
    found: Mapping[str, Any] | None = None
    for anchor in kept:
        if anchor is None:
            continue
        try:
            seq = int(anchor.get("record_seq", 0))
        except (TypeError, ValueError):
            return anchor  # malformed: the verifier reports it
        if found is None or seq > int(found.get("record_seq", 0)):
            found = anchor
    return found


@dataclass(frozen=True)
class Anchoring:
    """What ``AuditTrail`` needs to write and check anchors."""

    signer: ActiveKeySource
    archive: AnchorKeyArchive
    last: LastAnchors
    period: Callable[[], float] = lambda: DEFAULT_PERIOD
    """``audit.anchor_every`` now (a callable: a config reload may change it)."""
    heads: AnchorHeads | None = None
    """The newest anchor per tenant in the store too (the gateway always has one)."""

    async def newest(self, tenant: str) -> Mapping[str, Any] | None:
        """The newest anchor this instance or, sealed in the store, any instance kept."""
        stored = await self.heads.read(tenant) if self.heads is not None else None
        return newest_anchor(self.last.read(tenant), stored)

    async def keep(self, tenant: str, anchor: Mapping[str, Any]) -> None:
        self.last.write(tenant, anchor)
        if self.heads is not None:
            await self.heads.write(tenant, anchor)

    @property
    def unsigned_grace(self) -> float:
        """How old a stored record may be without a valid anchor after it (see module doc)."""
        period = self.period()
        return 2 * period + min(UNSIGNED_MARGIN, period)


__all__ = [
    "ANCHOR_EVENT",
    "ANCHOR_TYP",
    "MAX_DIGESTS",
    "UNSIGNED_MARGIN",
    "AnchorHeads",
    "AnchorInvalid",
    "AnchorKeyArchive",
    "AnchorKeys",
    "Anchoring",
    "LastAnchors",
    "Statement",
    "check_anchor_record",
    "digest",
    "sign",
]
