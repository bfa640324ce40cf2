"""Issuer key material for the JWT verifier (SPEC §5): static files, remote JWKS, the protocol.

**KeySource protocol** (also implemented by ``gateway.auth.signing.SigningKeys``)::

    async def key_for(self, kid: str | None) -> Sequence[tuple[PublicKey, tuple[str, ...]]]

returns the candidate public keys for a token's ``kid`` (``None``: the token has none), each
with the JWS algorithms it may verify; ``[]`` means "no key" (unknown, retired or revoked).
It must not raise for an unknown kid. The verifier still re-derives every key's algorithm
family itself (:func:`algorithms_for_key`), so a source can never widen what a key verifies.

**kid matching** (:meth:`KeySet.lookup`): keys without a ``kid`` (a ``public_key_file``, or a
JWKS entry without one) are candidates for every token, with or without a ``kid``: they are
the issuer's only keys, and the signature is still checked against them. A token without a
``kid`` also matches the single keyed key of a one-key set; otherwise it matches nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import jwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

log = logging.getLogger(__name__)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
KeyCandidate = tuple[PublicKey, tuple[str, ...]]

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
# SECURITY: alg confusion (CVE-2015-9235 family): only asymmetric algorithms exist here, so an
# HS256 token "signed" with a public key's bytes, or alg "none", has no key it could match.
ASYMMETRIC_ALGORITHMS = frozenset((*RSA_ALGORITHMS, *EC_ALGORITHMS.values(), "EdDSA"))
MIN_RSA_BITS = 2048
MAX_FILE_BYTES = 1024 * 1024
MAX_JWKS_BYTES = 256 * 1024
UNKNOWN_KID_REFETCH = 30.0  # SPEC §5: at most one re-fetch per 30 s on an unknown kid
FETCH_TIMEOUT = 3.0
_JWK_FAMILIES: dict[tuple[Any, Any], tuple[str, ...]] = {
    ("EC", "P-256"): ("ES256",), ("EC", "P-384"): ("ES384",), ("EC", "P-521"): ("ES512",),
    ("OKP", "Ed25519"): ("EdDSA",), ("OKP", "Ed448"): ("EdDSA",),
}  # fmt: skip
_PRIVATE = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


class KeySourceError(ValueError):
    """A key file cannot be used. Messages name the file and key index/kid, never key material."""


@runtime_checkable
class KeySource(Protocol):
    async def key_for(self, kid: str | None) -> Sequence[KeyCandidate]: ...

    def known_keys(self, kid: str | None) -> Sequence[KeyCandidate] | None:
        """What ``key_for`` would answer, from memory alone; ``None`` when finding out could
        take I/O (an unknown kid). Lets a cached token be re-checked without awaiting.
        Answering with the same immutable sequence object while the keys are unchanged lets the
        verifier skip searching it; a new object is always safe, only slower."""
        ...


def algorithms_for_key(key: object) -> tuple[str, ...]:
    """The JWS algorithms a public key object may verify; ``()`` for anything else (private
    keys, HMAC secrets as str/bytes, short RSA keys, unsupported curves)."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS if key.key_size >= MIN_RSA_BITS else ()
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = EC_ALGORITHMS.get(key.curve.name)
        return (alg,) if alg else ()
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    return ()


@dataclass(frozen=True)
class KeyEntry:
    kid: str | None
    kty: str
    algorithms: tuple[str, ...]
    key: PublicKey
    use: str | None = None


class KeySet:
    """Keys grouped by kid. Immutable once built; a refresh builds a new one."""

    def __init__(self, entries: Iterable[KeyEntry] = ()) -> None:
        self.entries = tuple(entries)
        self._by_kid: dict[str, list[KeyCandidate]] = {}
        self._unkeyed: list[KeyCandidate] = []
        for entry in self.entries:
            target = self._unkeyed if entry.kid is None else self._by_kid.setdefault(entry.kid, [])
            target.append((entry.key, entry.algorithms))
        # One immutable answer per question, built here: the verifier's cache recognises an
        # unchanged key set by the answer's identity instead of searching it on every request.
        self._unkeyed_answer: tuple[KeyCandidate, ...] = tuple(self._unkeyed)
        self._answers = {kid: (*keyed, *self._unkeyed) for kid, keyed in self._by_kid.items()}
        self._kidless_answer = self._unkeyed_answer
        if not self._unkeyed and len(self._by_kid) == 1:
            # A token without a kid matches the single keyed key of a one-key set, nothing more.
            (only,) = self._by_kid.values()
            self._kidless_answer = tuple(only) if len(only) == 1 else ()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._by_kid)

    def lookup(self, kid: str | None) -> tuple[KeyCandidate, ...]:
        # SECURITY: kid injection: the kid is only ever a dict key, never a path, URL or query.
        if kid is None:
            return self._kidless_answer
        return self._answers.get(kid, self._unkeyed_answer)


def _entry(jwk: Any, index: int) -> tuple[KeyEntry | None, str | None]:
    """One JWKS member → (entry, None), or (None, why skipped). Never echoes key material."""
    if not isinstance(jwk, dict):
        return None, f"key #{index} is not an object"
    kid, kty, use, alg = jwk.get("kid"), jwk.get("kty"), jwk.get("use"), jwk.get("alg")
    where = f"key #{index} (kid={kid!r})" if isinstance(kid, str) and len(kid) <= 128 else f"key #{index}"
    if kid is not None and not isinstance(kid, str):
        return None, f"{where}: kid is not a string"
    if use is not None and use != "sig":
        return None, f"{where}: use is {use!r}, not 'sig'"
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None, f"{where}: key_ops does not allow 'verify'"
    family = RSA_ALGORITHMS if kty == "RSA" else _JWK_FAMILIES.get((kty, jwk.get("crv")), ())
    if not family:
        # SECURITY: "oct" (HMAC secrets) and unknown types or curves are never verification keys.
        return None, f"{where}: key type {kty!r} (crv {jwk.get('crv')!r}) is not supported"
    if alg is not None and alg not in family:
        return None, f"{where}: alg {alg!r} does not fit a {kty} key"
    try:
        key: Any = jwt.PyJWK(jwk, algorithm=alg or family[0]).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None, f"{where}: not a valid {kty} key"
    if isinstance(key, _PRIVATE):
        log.warning("jwks: %s carries private key material; only its public half is used", where)
        key = key.public_key()
    usable = algorithms_for_key(key)
    if not usable:
        return None, f"{where}: key too weak or unsupported"
    return KeyEntry(kid, str(kty), (alg,) if alg else usable, key, use), None


def parse_jwks(data: Any) -> tuple[KeySet, list[str]]:
    """A JWKS document → (usable keys, reasons for skipped keys). Raises KeySourceError when
    the document itself is not a JWKS."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeySourceError("not a JWKS document (expected an object with a 'keys' list)")
    entries, skipped = [], []
    for index, jwk in enumerate(data["keys"]):
        entry, why = _entry(jwk, index)
        if entry is not None:
            entries.append(entry)
        elif why:
            skipped.append(why)
    return KeySet(entries), skipped


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeySourceError(
            f"{what} {path}: cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if len(data) > MAX_FILE_BYTES:
        raise KeySourceError(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes")
    return data


class StaticKeys:
    """Keys loaded once from a file (``jwks_file`` or ``public_key_file``)."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys

    @classmethod
    def from_jwks_file(cls, path: str | Path) -> StaticKeys:
        path = str(path)
        raw = _read(path, "jwks_file")
        if raw.lstrip()[:16].upper().startswith((b"REPLACE-ME", b"CHANGE-ME")):
            # deploy/k8s ships this placeholder so a forgotten one stops the gateway, never trusts
            # a key nobody controls; say so rather than "not valid JSON".
            raise KeySourceError(
                f"jwks_file {path}: still the deployment placeholder; put your identity "
                "provider's public JWKS there"
            )
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise KeySourceError(f"jwks_file {path}: not valid JSON") from None
        try:
            keys, skipped = parse_jwks(data)
        except KeySourceError as exc:
            raise KeySourceError(f"jwks_file {path}: {exc}") from None
        for why in skipped:
            log.warning("jwks_file %s: %s; skipped", path, why)
        if not keys:
            raise KeySourceError(f"jwks_file {path}: no usable signature verification key")
        return cls(keys)

    @classmethod
    def from_pem_file(cls, path: str | Path) -> StaticKeys:
        path = str(path)
        data = _read(path, "public_key_file")
        if b"PRIVATE KEY" in data:
            # SECURITY: a private key has no business in the gateway's config; refuse rather than
            # quietly use (and keep in memory) the issuer's signing key.
            raise KeySourceError(f"public_key_file {path}: holds a private key; give the public key")
        key: Any
        try:
            if b"-----BEGIN CERTIFICATE-----" in data:
                key = x509.load_pem_x509_certificate(data).public_key()
            else:
                key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise KeySourceError(f"public_key_file {path}: not a PEM public key or certificate") from None
        algorithms = algorithms_for_key(key)
        if not algorithms:
            raise KeySourceError(
                f"public_key_file {path}: unsupported key (EC P-256/384/521, RSA >= 2048, Ed25519/Ed448)"
            )
        kty = "RSA" if isinstance(key, rsa.RSAPublicKey) else "EC" if algorithms[0][:2] == "ES" else "OKP"
        return cls(KeySet([KeyEntry(None, kty, algorithms, key)]))

    async def key_for(self, kid: str | None) -> tuple[KeyCandidate, ...]:
        return self.keys.lookup(kid)

    def known_keys(self, kid: str | None) -> tuple[KeyCandidate, ...]:
        return self.keys.lookup(kid)


class FetchJwks(Protocol):
    """How a ``RemoteJwks`` downloads its document (the HTTP client is the caller's, at the
    edge: ``gateway.jwks_client.fetch_jwks``). GET ``url`` without following redirects, within
    ``timeout`` seconds, and return the body; raise ``KeySourceError("HTTP status N")`` for any
    status but 200 and ``KeySourceError("body too large")`` past ``max_bytes`` (declared or
    received, decompressed). Any other exception is a failed fetch too (logged by type)."""

    def __call__(self, url: str, timeout: float, max_bytes: int) -> Awaitable[bytes]: ...


class RemoteJwks:
    """A JWKS fetched over HTTP(S): cached, refreshed every ``refresh`` s by ``start()``'s
    background loop, re-fetched on an unknown kid at most once per ``min_refetch`` s.

    Failures (down, timeout, non-200, redirect, oversized, garbage, no usable key) keep the
    cached keys; they are logged once per streak and never raised to the caller."""

    def __init__(
        self,
        url: str,
        refresh: float,
        *,
        fetch: FetchJwks,
        clock: Callable[[], float] = time.monotonic,
        min_refetch: float = UNKNOWN_KID_REFETCH,
        max_bytes: int = MAX_JWKS_BYTES,
        timeout: float = FETCH_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise KeySourceError("jwks_url must be an absolute http:// or https:// URL")
        if refresh <= 0:
            raise KeySourceError("jwks_refresh must be positive")
        self.url, self.refresh_interval = url, refresh
        self._where = f"{parts.scheme}://{parts.netloc}{parts.path}"  # logs never carry the query
        self._fetch_document = fetch
        self._clock, self._min_refetch, self._max_bytes = clock, min_refetch, max_bytes
        self._timeout = timeout
        self.keys = KeySet()
        self.loaded = False
        self.fetches = 0  # attempts, for tests and metrics
        self._last_attempt: float | None = None
        self._failing = False
        self._inflight: asyncio.Task[bool] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def key_for(self, kid: str | None) -> tuple[KeyCandidate, ...]:
        found = self.keys.lookup(kid)
        if found:
            return found
        # SECURITY: a flood of tokens with made-up kids must not turn into a flood of requests
        # to the IdP (the Envoy/Oathkeeper rotation outage), so misses share one throttle.
        last = self._last_attempt
        if last is None or self._clock() - last >= self._min_refetch or self._busy():
            await self.refresh()
        return self.keys.lookup(kid)

    def known_keys(self, kid: str | None) -> tuple[KeyCandidate, ...] | None:
        return self.keys.lookup(kid) or None  # unknown: key_for may re-fetch

    def _busy(self) -> bool:
        return self._inflight is not None and not self._inflight.done()

    async def refresh(self) -> bool:
        """Fetch now (or join the fetch in flight). True when new keys were installed."""
        if not self._busy():
            self._last_attempt = self._clock()
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        assert self._inflight is not None
        # shield: a cancelled request must not abort the fetch other requests are waiting on
        return await asyncio.shield(self._inflight)

    async def _fetch(self) -> bool:
        self.fetches += 1
        try:
            document = await self._fetch_document(self.url, self._timeout, self._max_bytes)
            keys, skipped = parse_jwks(orjson.loads(document))
            if not keys:
                raise KeySourceError("no usable signature verification key")
        except Exception as exc:
            # Anything (network, HTTP, JSON, JWKS) keeps the cached keys: an IdP hiccup must not
            # become an outage. The message never includes the body.
            why = str(exc) if isinstance(exc, KeySourceError) else type(exc).__name__
            if not self._failing:
                log.warning(
                    "jwks %s: fetch failed (%s); keeping %d cached keys", self._where, why, len(self.keys)
                )
            self._failing = True
            return False
        for why in skipped:
            log.info("jwks %s: %s; skipped", self._where, why)
        if self._failing:
            log.info("jwks %s: fetch recovered", self._where)
        self._failing = False
        self.keys, self.loaded = keys, True
        return True

    async def refresh_loop(self) -> None:
        """Refresh forever: every ``refresh`` s, or sooner (≤ 30 s) while fetches fail."""
        while True:
            pause = min(self.refresh_interval, 30.0) if self._failing else self.refresh_interval
            await asyncio.sleep(pause)
            await self.refresh()

    async def start(self) -> None:
        """First fetch (awaited, so keys are there before traffic), then the background loop."""
        if self._loop_task is None:
            await self.refresh()
            self._loop_task = asyncio.get_running_loop().create_task(self.refresh_loop())

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A fetch in flight is left to finish (bounded by the timeout): requests may await it.
        if self._busy():
            assert self._inflight is not None
            await asyncio.shield(self._inflight)


# fmt: off
__all__ = [
    "ASYMMETRIC_ALGORITHMS", "FetchJwks", "KeyCandidate", "KeyEntry", "KeySet", "KeySource", "KeySourceError",
    "PublicKey", "RemoteJwks", "StaticKeys", "algorithms_for_key", "parse_jwks",
]
# fmt: on
