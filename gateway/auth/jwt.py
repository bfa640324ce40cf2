"""JWT verification (SPEC §5) and the MFA predicates (SPEC §6).

pyjwt does all the cryptography and the registered-claim checks; this module only decides
*which* key and algorithm may be tried, refuses dangerous headers before that, and checks the
gateway's own claim rules. Every refusal is a ``TokenRejected`` whose ``reason`` (one of
``REASONS``) is for logs and metrics only; it never carries token content.

Time: pyjwt checks ``exp``/``nbf``/``iat`` against the wall clock, and the verifier checks them
again against its ``clock`` (the same clock in production), which also drives the cache.

Cache: verified claims are cached by token hash (LRU, ``cache_size`` entries) until ``exp``:
the key is the BLAKE2b digest of the token's signature segment, and the entry holds the token's
signed part (``header.payload``), compared in full on every hit, so a hit is the very same token
(equal digests of the signature segment and an equal signed part) while the cache never holds a
token that could be replayed (the signature is kept only as its digest). Hashing the ~90
characters of an ES256 signature instead of the whole token (several hundred) was the costliest
step of a cached-token request; BLAKE2b (CPython's own, 512-bit) rather than OpenSSL's SHA-256,
whose per-call context set-up and copies cost more than hashing 90 bytes. A hit re-checks
``exp`` against the clock and that the verifying key is still served by its issuer's key source
(so a revoked or retired key ends its cached tokens too): while the source answers with the
same candidate list object as when the token was verified, the key set is unchanged; otherwise
the verifying key is searched in the new answer. A connection may keep a ``TokenMemo``, so the
same token string on its next request is not hashed again.
Refusals are not cached: an attacker picks the tokens, so a negative cache would only hold
their garbage, and every refusal before the signature check is already cheap.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from gateway.auth.keysources import (
    ASYMMETRIC_ALGORITHMS,
    FetchJwks,
    KeyCandidate,
    KeySource,
    PublicKey,
    RemoteJwks,
    StaticKeys,
    algorithms_for_key,
)
from gateway.config.model import AuthConfig, IssuerConfig

REASONS = frozenset(
    {
        "malformed", "oversized", "alg_not_allowed", "alg_none", "forbidden_header", "bad_kid",
        "unknown_kid", "unknown_issuer", "bad_signature", "expired", "not_yet_valid",
        "issued_in_future", "lifetime_too_long", "wrong_audience", "missing_claim", "bad_claim_type",
    }
)  # fmt: skip
# SECURITY: jku/x5u (key URL injection), jwk/x5c (attacker-embedded key), crit (extensions we do
# not implement), b64 (unencoded payloads), zip (compression): never honoured, always refused.
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "x5c", "jwk", "crit", "b64", "zip"})
# typ, when present, must name a JWT or an access token (RFC 9068, vendor "...at+jwt" forms):
# SECURITY: token confusion: a logout token or DPoP proof signed by the same key is refused.
_TYP = re.compile(r"(application/)?(jwt|([a-z0-9.-]+-)?at\+jwt)")
# Compact JWS: three base64url segments; the signature may be empty only to name "none" clearly.
_SHAPE = re.compile(r"[A-Za-z0-9_\-]+={0,2}\.[A-Za-z0-9_\-]+={0,2}\.[A-Za-z0-9_\-]*={0,2}")
# SECURITY: kid injection (path traversal, SQL, header smuggling): a short token of safe
# characters, without "..". It is only ever used as a dict key, but garbage is refused early.
_KID = re.compile(r"[A-Za-z0-9._~+/=:@#\-]{1,128}")
_MAX_CANDIDATES = 8  # bounds the signature checks one token can cost
log = logging.getLogger(__name__)
_blake2b = hashlib.blake2b


class TokenRejected(Exception):
    """A refused token. ``reason`` is from ``REASONS``; never echo it to the client."""

    def __init__(self, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"token rejected: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class VerifiedClaims:
    issuer: str
    subject: str
    tenant: str
    audience: tuple[str, ...]
    roles: tuple[str, ...]
    amr: tuple[str, ...]
    auth_time: int | None
    issued_at: int
    expires_at: int
    token_id: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)  # deep read-only (lists → tuples)
    # Derived once per verified token, not per request: a cached token's claims serve every
    # request of its session, so these are computed on the first one only.
    amr_set: frozenset[str] = field(init=False, repr=False, compare=False)
    roles_text: str = field(init=False, repr=False, compare=False)  # X-User-Roles, as signed
    # What a later stage derives from these claims alone, made on the token's first request and
    # kept with its claims (so never past the token's cache entry, and each request still passes
    # authentication's expiry and revocation checks first): gateway.tenancy.identity's own
    # identity (its check and its headers). Set with object.__setattr__; None until then.
    derived: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "amr_set", frozenset(self.amr))
        object.__setattr__(self, "roles_text", ",".join(self.roles))
        object.__setattr__(self, "derived", None)


@dataclass(frozen=True)
class _Issuer:
    config: IssuerConfig
    source: KeySource
    algorithms: frozenset[str]


@dataclass(frozen=True)
class _Cached:
    claims: VerifiedClaims
    issuer: _Issuer
    kid: str | None
    key: PublicKey
    # What the key source answered for the kid: while it answers with this very object, the
    # key set is unchanged (sources hand out one candidate list per kid and key set).
    candidates: Sequence[KeyCandidate]
    # The token's signed part (``header.payload``): a hit must present exactly this beside a
    # signature segment of the entry's digest (``_cache_key``).
    signed: str


def _cache_key(token: str) -> tuple[bytes, str]:
    """(BLAKE2b of the signature segment, the signed part) of an ASCII token: the cache's key
    and what an entry must match besides. Together they name one token exactly; the entry keeps
    the signed part, which without its signature is no credential."""
    signed, _, signature = token.rpartition(".")
    return _blake2b(signature.encode("ascii")).digest(), signed


class TokenMemo:
    """One connection's last bearer token and its cache key. Keep-alive clients present the
    same token on every request: comparing it with the last one costs far less than hashing it
    again (the digest was the costliest step of a cached-token request). Each connection holds
    its own, for as long as it is open; the verifier's cache stays keyed by digest."""

    __slots__ = ("digest", "signed", "token")

    def __init__(self) -> None:
        self.token: str | None = None
        self.digest = b""
        self.signed = ""


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


# pyjwt's exceptions → our reasons; order matters (subclasses before their bases).
_PYJWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "unknown_issuer"),
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt.InvalidIssuedAtError, "bad_claim_type"),
    (InvalidSubjectError, "bad_claim_type"),
    (InvalidJTIError, "bad_claim_type"),
)


def _reason_for(exc: Exception) -> str:
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "issued_in_future" if "(iat)" in str(exc) else "not_yet_valid"
    if isinstance(exc, jwt.DecodeError) and "must be an integer" in str(exc):
        return "bad_claim_type"  # non-numeric exp/nbf
    return next((reason for kind, reason in _PYJWT_REASONS if isinstance(exc, kind)), "malformed")


def _number(payload: Mapping[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("bad_claim_type")
    if isinstance(value, float) and not math.isfinite(value):
        raise TokenRejected("bad_claim_type")
    return int(value)


def _string(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if value is None:
        raise TokenRejected("missing_claim")
    if not isinstance(value, str) or not value:
        raise TokenRejected("bad_claim_type")
    return value


def _strings(payload: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = payload.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TokenRejected("bad_claim_type")
    return tuple(value)


class JwtVerifier:
    """Verifies bearer tokens of the configured issuers plus ``extra_issuers`` (the gateway's
    own MFA issuer, always trusted, SPEC §5). Extra sources are started/stopped by their
    owner; ``start()``/``stop()`` here drive only the remote JWKS sources built from config."""

    def __init__(
        self,
        auth: AuthConfig,
        *,
        tenant_claim: str = "tid",
        extra_issuers: Sequence[tuple[IssuerConfig, KeySource]] = (),
        clock: Callable[[], float] = time.time,
        fetch_jwks: FetchJwks | None = None,
        cache_size: int = 10_000,
    ) -> None:
        self._auth, self._tenant_claim, self._clock = auth, tenant_claim, clock
        self._leeway = float(auth.leeway)
        self._max_token_bytes = auth.max_token_bytes
        self._require = ["exp", "iat", "sub", "iss", "aud", tenant_claim]
        self._remote: list[RemoteJwks] = []
        self._issuers: dict[str, _Issuer] = {}
        for config in auth.issuers:
            self._add(config, self._source_for(config, fetch_jwks))
        for config, source in extra_issuers:
            self._add(config, source)
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._cache_size = cache_size

    def _source_for(self, config: IssuerConfig, fetch_jwks: FetchJwks | None) -> KeySource:
        if config.jwks_file:
            return StaticKeys.from_jwks_file(config.jwks_file)
        if config.public_key_file:
            return StaticKeys.from_pem_file(config.public_key_file)
        if config.jwks_url:
            if fetch_jwks is None:
                raise ValueError(f"issuer {config.issuer!r}: a jwks_url needs a JWKS fetcher (fetch_jwks)")
            remote = RemoteJwks(config.jwks_url, config.jwks_refresh, fetch=fetch_jwks)
            self._remote.append(remote)
            return remote
        raise ValueError(f"issuer {config.issuer!r} has no key source")

    def _add(self, config: IssuerConfig, source: KeySource) -> None:
        if config.issuer in self._issuers:
            raise ValueError(f"issuer {config.issuer!r} is configured twice")
        # SECURITY: whatever the config says, HMAC and "none" never get through.
        allowed = frozenset(config.algorithms) & ASYMMETRIC_ALGORITHMS
        self._issuers[config.issuer] = _Issuer(config, source, allowed)

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._issuers)

    async def start(self) -> None:
        await asyncio.gather(*(remote.start() for remote in self._remote))

    async def stop(self) -> None:
        await asyncio.gather(*(remote.stop() for remote in self._remote))

    def verify_cached(self, token: str, memo: TokenMemo | None = None) -> VerifiedClaims | None:
        """The claims of a token verified before whose key is still current, without awaiting
        (the common case, every request of a session); ``None``: call ``verify``. Raises
        ``TokenRejected`` as ``verify`` would. ``memo``: the connection's, if it keeps one."""
        if memo is not None and token == memo.token:
            digest, signed = memo.digest, memo.signed
        else:
            if not isinstance(token, str) or len(token) > self._max_token_bytes or not token.isascii():
                return None  # verify() says why
            digest, signed = _cache_key(token)
            if memo is not None:
                memo.token, memo.digest, memo.signed = token, digest, signed
        cached = self._cache.get(digest)
        if cached is None or cached.signed != signed:
            return None
        keys = cached.issuer.source.known_keys(cached.kid)
        if keys is None:
            return None
        claims = cached.claims
        # _still_valid's common case, inline (every request of a session): unexpired, and the
        # key source answered with the very object it did when the token was verified.
        if keys is cached.candidates and claims.expires_at > self._clock() - self._leeway:
            self._cache.move_to_end(digest)
            return claims
        return self._still_valid(digest, cached, keys)

    async def verify(self, token: str) -> VerifiedClaims:
        if not isinstance(token, str):
            raise TokenRejected("malformed")
        # SECURITY: size first, before any parsing: oversized tokens cost nothing (DoS).
        if len(token) > self._auth.max_token_bytes:
            raise TokenRejected("oversized")
        if not token.isascii():
            raise TokenRejected("malformed")
        digest, signed = _cache_key(token)
        cached = self._cache.get(digest)
        if cached is not None and cached.signed == signed:
            # The very same string passed every check below when it was cached; the shape regex
            # is the costliest of them on a hit, so it runs on misses only.
            keys = await cached.issuer.source.key_for(cached.kid)
            return self._still_valid(digest, cached, keys)
        if not _SHAPE.fullmatch(token):
            raise TokenRejected("malformed")
        header, payload = self._unverified(token)
        alg, kid = self._check_header(header)
        iss = payload.get("iss")
        if not isinstance(iss, str):
            raise TokenRejected("missing_claim" if iss is None else "bad_claim_type")
        issuer = self._issuers.get(iss)  # unverified: it only picks the key set to try
        if issuer is None:
            raise TokenRejected("unknown_issuer")
        if alg not in issuer.algorithms:
            raise TokenRejected("alg_not_allowed")
        answered = await issuer.source.key_for(kid)
        candidates = list(answered)
        if not candidates:
            raise TokenRejected("unknown_kid")
        # SECURITY: alg confusion: the algorithm must belong to the key's own family, re-derived
        # from the key object, whatever the source claims.
        usable = [k for k, algs in candidates if alg in algs and alg in algorithms_for_key(k)]
        if not usable:
            raise TokenRejected("alg_not_allowed")
        for key in usable[:_MAX_CANDIDATES]:
            try:
                verified = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],  # one fixed algorithm, checked above against issuer and key
                    audience=list(issuer.config.audience),
                    issuer=issuer.config.issuer,
                    leeway=self._leeway,
                    options={"require": self._require, "enforce_minimum_key_length": True},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise TokenRejected(_reason_for(exc)) from None
            except Exception as exc:  # fail closed; the type only, messages could quote input
                log.error("jwt: unexpected %s while verifying a token", type(exc).__name__)
                raise TokenRejected("malformed") from None
            claims = self._claims(verified, issuer.config.issuer)
            self._remember(digest, _Cached(claims, issuer, kid, key, answered, signed))
            return claims
        raise TokenRejected("bad_signature")

    def _unverified(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and payload, unverified: only to choose the issuer, key and algorithm."""
        try:
            header = jwt.get_unverified_header(token)
            payload = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise TokenRejected("malformed") from None
        except jwt.InvalidTokenError as exc:  # pyjwt's own header checks: crit, or a non-string kid
            text = str(exc).lower()
            raise TokenRejected(
                "forbidden_header" if "crit" in text else "bad_kid" if "key id" in text else "malformed"
            ) from None
        except Exception:  # fail closed on anything unexpected in attacker-controlled input
            raise TokenRejected("malformed") from None
        return header, payload

    def _check_header(self, header: Mapping[str, Any]) -> tuple[str, str | None]:
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise TokenRejected("malformed")
        if alg.lower() == "none":
            raise TokenRejected("alg_none")  # SECURITY: unsigned tokens (CVE-2015-9235)
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise TokenRejected("alg_not_allowed")  # SECURITY: HS* with a public key as secret
        if FORBIDDEN_HEADERS & header.keys():
            raise TokenRejected("forbidden_header")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or not _TYP.fullmatch(typ.lower())):
            raise TokenRejected("forbidden_header")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not _KID.fullmatch(kid) or ".." in kid):
            raise TokenRejected("bad_kid")  # SECURITY: kid injection
        return alg, kid

    def _claims(self, payload: dict[str, Any], issuer: str) -> VerifiedClaims:
        now, leeway = self._clock(), self._leeway
        exp, iat, nbf = _number(payload, "exp"), _number(payload, "iat"), _number(payload, "nbf")
        auth_time = _number(payload, "auth_time")
        if exp is None or iat is None:
            raise TokenRejected("missing_claim")
        if exp <= now - leeway:
            raise TokenRejected("expired")
        if nbf is not None and nbf > now + leeway:
            raise TokenRejected("not_yet_valid")
        if iat > now + leeway or (auth_time is not None and auth_time > now + leeway):
            raise TokenRejected("issued_in_future")
        if exp - iat > self._auth.max_token_lifetime:
            raise TokenRejected("lifetime_too_long")
        aud = payload.get("aud")
        token_id = payload.get("jti")
        if token_id is not None and not isinstance(token_id, str):
            raise TokenRejected("bad_claim_type")
        return VerifiedClaims(
            issuer=issuer,
            subject=_string(payload, "sub"),
            tenant=_string(payload, self._tenant_claim),
            audience=(aud,) if isinstance(aud, str) else _strings(payload, "aud"),
            roles=_strings(payload, self._auth.roles_claim),
            amr=_strings(payload, "amr"),
            auth_time=auth_time,
            issued_at=iat,
            expires_at=exp,
            token_id=token_id,
            raw=_freeze(payload),
        )

    def _remember(self, digest: bytes, entry: _Cached) -> None:
        self._cache[digest] = entry
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _still_valid(self, digest: bytes, cached: _Cached, keys: Sequence[KeyCandidate]) -> VerifiedClaims:
        """A cache hit holds while the token is unexpired and the key that verified it is
        still among its issuer's keys for that kid (keys rotate --revoke-old, a JWKS change)."""
        if cached.claims.expires_at <= self._clock() - self._leeway:
            self._cache.pop(digest, None)
            raise TokenRejected("expired")
        if keys is cached.candidates:  # the same answer: the key set, and so the key, is unchanged
            self._cache.move_to_end(digest)
            return cached.claims
        wanted = cached.key
        for key, _ in keys:
            # Identity first: the same key object is the common case, and == on keys is not free.
            if key is wanted or key == wanted:
                if self._cache.get(digest) is cached:  # not evicted meanwhile (verify() awaits)
                    # Still served, from a new answer (a reload): remember it for the fast check.
                    self._cache[digest] = replace(cached, candidates=keys)
                    self._cache.move_to_end(digest)
                return cached.claims
        self._cache.pop(digest, None)
        raise TokenRejected("unknown_kid")

    @property
    def cache_size(self) -> int:
        return len(self._cache)


def has_mfa(claims: VerifiedClaims, accepted_amr: Sequence[str]) -> bool:
    """SPEC §6: MFA-backed means ``amr`` names at least one accepted method."""
    return not claims.amr_set.isdisjoint(accepted_amr)


def mfa_fresh(claims: VerifiedClaims, max_age: float, now: float) -> bool:
    """SPEC §6 ``mfa_max_age``: the authentication (``auth_time``) is at most ``max_age`` old.
    No ``auth_time`` means unknown age: not fresh."""
    return claims.auth_time is not None and now - claims.auth_time <= max_age


__all__ = ["REASONS", "JwtVerifier", "TokenMemo", "TokenRejected", "VerifiedClaims", "has_mfa", "mfa_fresh"]
