"""JwtVerifier: the attack matrix (every case refused with its reason), happy paths, issuers,
leeway, the cache, extra issuers, the MFA helpers, and random mutations (hypothesis)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.utils import base64url_decode, base64url_encode

from gateway.auth.jwt import (
    REASONS,
    JwtVerifier,
    TokenMemo,
    TokenRejected,
    VerifiedClaims,
    has_mfa,
    mfa_fresh,
)
from gateway.auth.signing import SigningKeys
from gateway.config.model import AuthConfig, IssuerConfig
from gateway.crypto import ENV_VAR, Keyring
from gateway.state import open_store
from tests.support.timing import Clock

A, B, AUD = "https://a.example", "https://b.example", "erp"
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
B_KEY = ec.generate_private_key(ec.SECP256R1())
EVIL_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    to = {ec.EllipticCurvePrivateKey: ECAlgorithm, rsa.RSAPrivateKey: RSAAlgorithm}
    cls = next((a for t, a in to.items() if isinstance(key, t)), OKPAlgorithm)
    return {**cls.to_jwk(key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def _pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": A, "aud": AUD, "sub": "u1", "tid": "t1", "iat": now, "exp": now + 600,
            "roles": ["clerk"], "amr": ["pwd", "otp"], "auth_time": now, "jti": "j1"}  # fmt: skip
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def token(
    key: Any = EC_KEY, alg: str = "ES256", kid: str | None = "ec-1", headers: Any = None, **c: Any
) -> str:
    extra = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**c), key, algorithm=alg, headers={**extra, **(headers or {})})


def b64json(value: Any) -> str:
    return base64url_encode(json.dumps(value).encode()).decode()


def forge(header: dict[str, Any], payload: Any, signature: bytes = b"") -> str:
    """Hand-built attack tokens (tests only: pyjwt refuses to produce these)."""
    return f"{b64json(header)}.{b64json(payload)}.{base64url_encode(signature).decode()}"


def fake(payload: Any, **header: Any) -> str:
    """An ES256-looking token with a junk signature: for checks that come before the signature."""
    return forge({"alg": "ES256", "kid": "ec-1", **header}, payload, b"x" * 64)


def signed_raw(header: dict[str, Any]) -> str:
    """A properly ES256-signed token with a header pyjwt's encoder would rewrite."""
    head = f"{b64json({'alg': 'ES256', 'kid': 'ec-1', **header})}.{b64json(claims())}"
    signature = ECAlgorithm(ECAlgorithm.SHA256).sign(head.encode(), EC_KEY)
    return f"{head}.{base64url_encode(signature).decode()}"


def raw_segments(header: bytes, payload: bytes) -> str:
    return f"{base64url_encode(header).decode()}.{base64url_encode(payload).decode()}.abc"


def hs256_with_public_pem(pem: bytes, kid: str) -> str:
    head = f"{b64json({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64json(claims())}"
    mac = hmac.new(pem, head.encode(), hashlib.sha256).digest()
    return f"{head}.{base64url_encode(mac).decode()}"


def tamper_payload() -> str:
    head, _, sig = token().split(".")
    return f"{head}.{b64json(claims(tid='t2'))}.{sig}"  # one character of the claims changed


def tamper_signature() -> str:
    head, payload, sig = token().split(".")
    raw = bytearray(base64url_decode(sig))
    raw[5] ^= 0x01
    return f"{head}.{payload}.{base64url_encode(bytes(raw)).decode()}"


NOW = int(time.time())


def _now() -> int:
    # Evaluated when a case runs, not at import: the suite may reach these cases minutes after
    # collection, and a "future" claim built from an import-time clock would no longer be one.
    return int(time.time())


REQUIRED = ("exp", "iat", "sub", "iss", "aud", "tid")
# fmt: off
ATTACKS: list[tuple[str, Callable[[], str], str]] = [
    ("alg-none-unsigned", lambda: forge({"alg": "none", "typ": "JWT"}, claims()), "alg_none"),
    ("alg-none-signed", lambda: forge({"alg": "none", "kid": "ec-1"}, claims(), b"x" * 64), "alg_none"),
    ("alg-NONE-case", lambda: forge({"alg": "NONE", "kid": "ec-1"}, claims(), b"x" * 64), "alg_none"),
    ("hs256-ec-public-pem", lambda: hs256_with_public_pem(_pem(EC_KEY), "ec-1"), "alg_not_allowed"),
    ("hs256-rsa-public-pem", lambda: hs256_with_public_pem(_pem(RSA_KEY), "rsa-1"), "alg_not_allowed"),
    ("rs256-against-ec-key", lambda: token(RSA_KEY, "RS256", "ec-1"), "alg_not_allowed"),
    ("es384-not-allowed", lambda: token(EC384_KEY, "ES384", "ec-1"), "alg_not_allowed"),
    ("alg-not-string", lambda: fake(claims(), alg=256), "malformed"),
    ("expired", lambda: token(exp=_now() - 120, iat=_now() - 600), "expired"),
    ("nbf-future", lambda: token(nbf=_now() + 300), "not_yet_valid"),
    ("iat-future", lambda: token(iat=_now() + 300, exp=_now() + 900), "issued_in_future"),
    ("auth-time-future", lambda: token(auth_time=_now() + 300), "issued_in_future"),
    ("wrong-iss", lambda: token(iss="https://evil.example"), "unknown_issuer"),
    ("iss-not-string", lambda: fake(claims(iss=[A])), "bad_claim_type"),
    ("wrong-aud", lambda: token(aud="other"), "wrong_audience"),
    ("wrong-aud-list", lambda: token(aud=["x", "y"]), "wrong_audience"),
    *[(f"missing-{c}", lambda c=c: token(**{c: DROP}), "missing_claim") for c in REQUIRED],
    ("roles-not-list", lambda: token(roles="admin"), "bad_claim_type"),
    ("roles-not-strings", lambda: token(roles=["a", 1]), "bad_claim_type"),
    ("tid-not-string", lambda: token(tid=42), "bad_claim_type"),
    ("tid-empty", lambda: token(tid=""), "bad_claim_type"),
    ("sub-not-string", lambda: token(sub=7), "bad_claim_type"),
    ("exp-string", lambda: token(exp=str(_now() + 600)), "bad_claim_type"),
    ("iat-bool", lambda: token(iat=True), "bad_claim_type"),
    ("amr-string", lambda: token(amr="otp"), "bad_claim_type"),
    ("jti-number", lambda: token(jti=5), "bad_claim_type"),
    ("unknown-kid", lambda: token(kid="nope"), "unknown_kid"),
    ("other-key-same-kid", lambda: token(EVIL_KEY), "bad_signature"),
    ("tampered-payload", tamper_payload, "bad_signature"),
    ("tampered-signature", tamper_signature, "bad_signature"),
    ("lifetime-over-max", lambda: token(exp=_now() + 2 * 86400), "lifetime_too_long"),
    ("jku", lambda: token(headers={"jku": "https://evil.example/jwks"}), "forbidden_header"),
    ("x5u", lambda: token(headers={"x5u": "https://evil.example/cert"}), "forbidden_header"),
    ("x5c", lambda: token(headers={"x5c": ["MIIB"]}), "forbidden_header"),
    ("jwk", lambda: token(EVIL_KEY, headers={"jwk": _jwk(EVIL_KEY, "ec-1")}), "forbidden_header"),
    ("crit-unknown", lambda: token(headers={"crit": ["exp"]}), "forbidden_header"),
    ("crit-b64", lambda: signed_raw({"crit": ["b64"], "b64": True}), "forbidden_header"),
    ("zip", lambda: signed_raw({"zip": "DEF"}), "forbidden_header"),
    ("typ-logout", lambda: token(headers={"typ": "logout+jwt"}), "forbidden_header"),
    ("oversized-1mb", lambda: "a" * 1_000_000, "oversized"),
    ("oversized-signed", lambda: token(pad="x" * 10_000), "oversized"),
    ("header-not-json", lambda: raw_segments(b"nope", json.dumps(claims()).encode()), "malformed"),
    ("payload-not-json", lambda: raw_segments(b'{"alg": "ES256"}', b"{x"), "malformed"),
    ("payload-array", lambda: fake([1, 2]), "malformed"),
    ("two-segments", lambda: ".".join(token().split(".")[:2]), "malformed"),
    ("four-segments", lambda: token() + ".abc", "malformed"),
    ("jwe-five-segments", lambda: "a.b.c.d.e", "malformed"),
    ("empty", lambda: "", "malformed"),
    ("non-ascii", lambda: token()[:-2] + "é", "malformed"),
    ("bad-base64", lambda: token().replace(".", ".!", 1), "malformed"),
    ("kid-path-traversal", lambda: token(kid="../../etc/passwd"), "bad_kid"),
    ("kid-nul", lambda: token(kid="ec-1\x00"), "bad_kid"),
    ("kid-too-long", lambda: token(kid="k" * 200), "bad_kid"),
    ("kid-not-string", lambda: fake(claims(), kid=5), "bad_kid"),
]
# fmt: on


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("keys")
    a = directory / "a.json"
    a.write_text(json.dumps({"keys": [_jwk(EC_KEY, "ec-1"), _jwk(RSA_KEY, "rsa-1"), _jwk(ED_KEY, "ed-1")]}))
    b = directory / "b.json"
    b.write_text(json.dumps({"keys": [_jwk(B_KEY, "b-1")]}))
    return a, b


def make_verifier(key_files: tuple[Path, Path], **kwargs: Any) -> JwtVerifier:
    issuers = (
        IssuerConfig(issuer=A, audience=(AUD,), jwks_file=str(key_files[0])),
        IssuerConfig(issuer=B, audience=(AUD,), jwks_file=str(key_files[1])),
    )
    return JwtVerifier(AuthConfig(issuers=issuers, max_token_bytes=8192), **kwargs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(key_files: tuple[Path, Path], clock: Clock) -> JwtVerifier:
    return make_verifier(key_files, clock=clock)


@pytest.mark.parametrize(("build", "reason"), [pytest.param(b, r, id=i) for i, b, r in ATTACKS])
async def test_attack_matrix_refused(verifier: JwtVerifier, build: Callable[[], str], reason: str) -> None:
    bad = build()
    for _ in range(2):  # a refusal is never cached into an acceptance
        with pytest.raises(TokenRejected) as caught:
            await verifier.verify(bad)
        assert caught.value.reason == reason
        assert str(caught.value) == f"token rejected: {reason}"  # nothing of the token
    assert verifier.cache_size == 0


HAPPY = [(EC_KEY, "ES256", "ec-1"), (RSA_KEY, "RS256", "rsa-1"), (ED_KEY, "EdDSA", "ed-1")]


@pytest.mark.parametrize(("key", "alg", "kid"), HAPPY)
async def test_happy_paths(verifier: JwtVerifier, key: Any, alg: str, kid: str) -> None:
    result = await verifier.verify(token(key, alg, kid, auth_time=NOW - 5))
    assert (result.issuer, result.subject, result.tenant, result.audience) == (A, "u1", "t1", (AUD,))
    assert (result.roles, result.amr, result.auth_time) == (("clerk",), ("pwd", "otp"), NOW - 5)
    assert result.token_id == "j1"
    assert result.expires_at - result.issued_at == 600
    assert result.raw["roles"] == ("clerk",)
    with pytest.raises(TypeError):
        result.raw["sub"] = "admin"  # type: ignore[index]


async def test_optional_claims_absent(verifier: JwtVerifier) -> None:
    result = await verifier.verify(token(roles=DROP, amr=DROP, auth_time=DROP, jti=DROP))
    assert (result.roles, result.amr, result.auth_time, result.token_id) == ((), (), None, None)


async def test_several_issuers_keys_never_cross(verifier: JwtVerifier) -> None:
    assert (await verifier.verify(token(B_KEY, kid="b-1", iss=B))).issuer == B
    crossed = [
        (token(B_KEY, kid="b-1"), "unknown_kid"),  # A's token, B's key and kid
        (token(B_KEY, kid="ec-1"), "bad_signature"),  # A's token and kid, B's key
        (token(EC_KEY, kid="ec-1", iss=B), "unknown_kid"),  # B's token, A's key and kid
    ]
    for forged, reason in crossed:
        with pytest.raises(TokenRejected) as caught:
            await verifier.verify(forged)
        assert caught.value.reason == reason


async def test_leeway_honoured(verifier: JwtVerifier) -> None:
    now = int(time.time())
    await verifier.verify(token(exp=now - 10, iat=now - 600))  # within the 30 s leeway
    await verifier.verify(token(iat=now + 20, nbf=now + 20))
    with pytest.raises(TokenRejected, match="expired"):
        await verifier.verify(token(exp=now - 45, iat=now - 600))


async def test_cache_hit_and_expiry(verifier: JwtVerifier, clock: Clock) -> None:
    good = token(exp=int(clock.now) + 60)
    first = await verifier.verify(good)
    assert await verifier.verify(good) is first
    assert verifier.cache_size == 1
    clock.now += 95  # past exp + leeway
    with pytest.raises(TokenRejected) as caught:
        await verifier.verify(good)
    assert caught.value.reason == "expired"
    assert verifier.cache_size == 0


async def test_the_synchronous_cache_check_agrees_with_verify(verifier: JwtVerifier, clock: Clock) -> None:
    good = token(exp=int(clock.now) + 60)
    assert verifier.verify_cached(good) is None  # never verified: the full check must run
    first = await verifier.verify(good)
    assert verifier.verify_cached(good) is first
    # Refusals and odd input are left to verify(), which says why.
    for odd in (good[:-2] + "xx", "x" * 20_000, "tök.en.x"):
        assert verifier.verify_cached(odd) is None
    clock.now += 95  # past exp + leeway
    with pytest.raises(TokenRejected, match="expired"):
        verifier.verify_cached(good)
    assert verifier.verify_cached(good) is None and verifier.cache_size == 0


async def test_a_connections_token_memo_never_answers_for_another_token(
    verifier: JwtVerifier, clock: Clock
) -> None:
    first_token, other_token = token(jti="first"), token(jti="other")
    memo = TokenMemo()
    first = await verifier.verify(first_token)
    assert verifier.verify_cached(first_token, memo) is first
    signed, _, signature = first_token.rpartition(".")
    assert memo.token == first_token and memo.signed == signed
    assert memo.digest == hashlib.blake2b(signature.encode()).digest()
    # SECURITY: the memo only spares re-hashing the very same string; any other token, a
    # one-character edit included, is looked up by its own digest.
    tampered = first_token[:-2] + ("AA" if first_token[-2:] != "AA" else "BB")
    assert verifier.verify_cached(tampered, memo) is None and memo.token == tampered
    assert verifier.verify_cached(other_token, memo) is None  # never verified: full check
    other = await verifier.verify(other_token)
    assert verifier.verify_cached(other_token, memo) is other
    assert verifier.verify_cached(first_token, memo) is first
    clock.now += 700  # past exp + leeway: a memo hit still checks expiry
    with pytest.raises(TokenRejected, match="expired"):
        verifier.verify_cached(first_token, memo)


async def test_a_cached_tokens_signature_under_another_signed_part_is_never_a_hit(
    verifier: JwtVerifier,
) -> None:
    """SECURITY: the cache is keyed by the digest of the signature segment; a hit also needs the
    very signed part (header.payload) that was verified. A token that reuses a cached token's
    signature with other claims (a raised role, another tenant, a later exp), or the same
    signature with the original signed part edited by a character, is never answered from the
    cache: verify_cached leaves it to verify(), which refuses its signature."""
    good = token(jti="victim")
    claims_ = await verifier.verify(good)
    head, payload, signature = good.split(".")
    raised = b64json(claims(jti="victim", roles=["tenant-admin"], tid="t2"))
    edited = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    memo = TokenMemo()
    for forged in (f"{head}.{raised}.{signature}", f"{head}.{edited}.{signature}", f"{payload}.{signature}"):
        for m in (None, memo):
            assert verifier.verify_cached(forged, m) is None
        with pytest.raises(TokenRejected):
            await verifier.verify(forged)
    # The genuine token is still cached (a forged one neither evicted nor replaced it).
    assert verifier.verify_cached(good, memo) is claims_
    assert await verifier.verify(good) is claims_


class AnsweringSource:
    """A KeySource that hands out one answer object per key set, as KeySet and SigningKeys do."""

    def __init__(self, key: Any) -> None:
        self.answer: list[tuple[Any, tuple[str, ...]]] = [(key, ("ES256",))]

    async def key_for(self, kid: str | None) -> list[tuple[Any, tuple[str, ...]]]:
        return self.answer if kid == "gw-1" else []

    def known_keys(self, kid: str | None) -> list[tuple[Any, tuple[str, ...]]] | None:
        return self.answer if kid == "gw-1" else None


async def test_a_changed_key_set_is_rechecked_on_the_cached_path(key_files: tuple[Path, Path]) -> None:
    source = AnsweringSource(B_KEY.public_key())
    verifier = make_verifier(key_files, extra_issuers=[(GW, source)])
    good = token(B_KEY, kid="gw-1", iss=GW.issuer)
    claims_ = await verifier.verify(good)
    assert verifier.verify_cached(good) is claims_
    # A reload: a new answer holding an equal key (a new object). Still served, so accepted.
    public_pem = _pem(B_KEY)
    source.answer = [(serialization.load_pem_public_key(public_pem), ("ES256",))]
    assert verifier.verify_cached(good) is claims_
    assert verifier.verify_cached(good) is claims_
    # A new answer without the verifying key (rotated out at the issuer): the token is refused.
    source.answer = [(EVIL_KEY.public_key(), ("ES256",))]
    with pytest.raises(TokenRejected, match="unknown_kid"):
        verifier.verify_cached(good)


async def test_cache_is_bounded(key_files: tuple[Path, Path]) -> None:
    verifier = make_verifier(key_files, cache_size=2)
    for n in range(3):
        await verifier.verify(token(jti=f"j{n}"))
    assert verifier.cache_size == 2


class SwitchableSource:
    """A KeySource like SigningKeys: keys can be revoked."""

    def __init__(self, key: Any, algorithms: tuple[str, ...] = ("ES256",)) -> None:
        self.key, self.algorithms, self.revoked = key, algorithms, False

    async def key_for(self, kid: str | None) -> list[tuple[Any, tuple[str, ...]]]:
        return [] if self.revoked or kid != "gw-1" else [(self.key, self.algorithms)]

    def known_keys(self, kid: str | None) -> list[tuple[Any, tuple[str, ...]]]:
        return [] if self.revoked or kid != "gw-1" else [(self.key, self.algorithms)]


GW = IssuerConfig(issuer="https://gw.example", audience=(AUD,), algorithms=("ES256",))


async def test_extra_issuer_and_revoked_key_ends_cached_tokens(key_files: tuple[Path, Path]) -> None:
    source = SwitchableSource(B_KEY.public_key())
    verifier = make_verifier(key_files, extra_issuers=[(GW, source)])
    good = token(B_KEY, kid="gw-1", iss=GW.issuer)
    assert (await verifier.verify(good)).issuer == GW.issuer
    source.revoked = True
    with pytest.raises(TokenRejected, match="unknown_kid"):
        verifier.verify_cached(good)  # the synchronous hit path sees the withdrawn key too
    with pytest.raises(TokenRejected, match="unknown_kid"):
        await verifier.verify(good)


async def test_gateway_signing_keys_as_extra_issuer(key_files: tuple[Path, Path], tmp_path: Path) -> None:
    """The real KeySource of the MFA module: its tokens verify; revoke-old ends cached ones."""
    keyring = Keyring.from_env({ENV_VAR: "k1:" + base64.b64encode(bytes(range(32))).decode()})
    async with open_store(f"local:{tmp_path / 'state'}") as store:
        signing = SigningKeys(store, keyring)
        await signing.load()
        verifier = make_verifier(key_files, extra_issuers=[(GW, signing)])
        minted = signing.sign(claims(iss=GW.issuer, amr=["pwd", "otp"]))
        assert has_mfa(await verifier.verify(minted), ("otp",))
        await signing.rotate(revoke_old=False, token_ttl=900)
        assert (await verifier.verify(minted)).issuer == GW.issuer  # old key still in its window
        assert verifier.verify_cached(minted) is not None
        await signing.rotate(revoke_old=True, token_ttl=900)
        # The fast path does not know the revoked key any more: it defers, never accepts.
        assert verifier.verify_cached(minted) is None
        with pytest.raises(TokenRejected, match="unknown_kid"):
            await verifier.verify(minted)  # was cached: the revoked key ends it at once


@pytest.mark.parametrize("bad", [b"secret-bytes", "pem-string", EC_KEY])  # HMAC secrets, private key
async def test_extra_source_cannot_widen_algorithms(key_files: tuple[Path, Path], bad: Any) -> None:
    config = IssuerConfig(issuer=GW.issuer, audience=(AUD,), algorithms=("ES256", "HS256"))
    verifier = make_verifier(key_files, extra_issuers=[(config, SwitchableSource(bad, ("HS256", "ES256")))])
    for forged in (hs256_with_public_pem(b"secret-bytes", "gw-1"), token(EC_KEY, kid="gw-1", iss=GW.issuer)):
        with pytest.raises(TokenRejected, match="alg_not_allowed"):
            await verifier.verify(forged)


async def test_pem_key_without_kid(tmp_path: Path) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_bytes(_pem(RSA_KEY))
    config = IssuerConfig(issuer=A, audience=(AUD,), public_key_file=str(pem))
    verifier = JwtVerifier(AuthConfig(issuers=(config,)))
    await verifier.verify(token(RSA_KEY, "RS256", kid=None))
    await verifier.verify(token(RSA_KEY, "RS256", kid="whatever-the-idp-stamps"))
    with pytest.raises(TokenRejected, match="alg_not_allowed"):
        await verifier.verify(token(EC_KEY, kid=None))


async def test_custom_tenant_claim_and_duplicate_issuers(key_files: tuple[Path, Path]) -> None:
    verifier = make_verifier(key_files, tenant_claim="org")
    assert (await verifier.verify(token(org="o9", tid=DROP))).tenant == "o9"
    with pytest.raises(ValueError, match="twice"):
        make_verifier(key_files, extra_issuers=[(IssuerConfig(A, (AUD,)), SwitchableSource(B_KEY))])


def test_reasons_and_mfa_helpers() -> None:
    assert "bad_signature" in REASONS
    with pytest.raises(ValueError):
        TokenRejected("because")
    c = VerifiedClaims(A, "u", "t", (AUD,), (), ("pwd", "otp"), 1000, 1000, 2000, None, {})
    assert has_mfa(c, ("otp", "hwk")) and not has_mfa(c, ("hwk",))
    assert mfa_fresh(c, 900, 1900) and not mfa_fresh(c, 900, 1901)
    assert not mfa_fresh(VerifiedClaims(A, "u", "t", (AUD,), (), ("otp",), None, 1, 2, None, {}), 900, 1)


EXAMPLES = 50 if os.environ.get("CI") == "true" else 200
VALID = token(exp=NOW + 3600).encode()
Edit = tuple[str, int, int]
EDIT = st.tuples(st.sampled_from("rid"), st.integers(0, len(VALID) - 1), st.integers(0, 255))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(EDIT, min_size=1, max_size=4))
def test_random_mutations_never_accepted(key_files: tuple[Path, Path], edits: list[Edit]) -> None:
    """Replace (r), insert (i) or delete (d) bytes anywhere: always TokenRejected, never a crash."""
    data = bytearray(VALID)
    for op, pos, value in edits:
        pos = min(pos, len(data) - 1)
        if op == "r":
            data[pos] = value
        elif op == "i":
            data.insert(pos, value)
        elif len(data) > 1:
            del data[pos]
    if bytes(data) == VALID:
        return
    verifier = make_verifier(key_files)
    with pytest.raises(TokenRejected) as caught:
        asyncio.run(verifier.verify(data.decode("latin-1")))
    assert caught.value.reason in REASONS
