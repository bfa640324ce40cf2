"""Key sources: a real local JWKS server (rotation, throttled re-fetch, scheduled refresh,
outages, garbage, size limit, redirects, ``use``), static files and their errors."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.auth.jwt import JwtVerifier
from gateway.auth.keysources import (
    KeySource,
    KeySourceError,
    RemoteJwks,
    StaticKeys,
    algorithms_for_key,
    parse_jwks,
)
from gateway.config.model import AuthConfig, IssuerConfig
from gateway.jwks_client import fetch_jwks
from tests.support.timing import Clock

KEY_1 = ec.generate_private_key(ec.SECP256R1())
KEY_2 = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    cls = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    body = cls.to_jwk(key.public_key(), as_dict=True)
    return {**body, **({"kid": kid} if kid else {}), "use": "sig", **extra}


class JwksServer:
    """Serves ``self.document`` (or a failure ``mode``) and counts requests."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": [jwk(KEY_1, "k1")]}
        self.mode, self.hits = "ok", 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.mode == "garbage":
            return web.Response(body=b"<html>oops", content_type="text/html")
        if self.mode == "huge":
            return web.Response(body=b" " * (300 * 1024) + json.dumps(self.document).encode())
        if self.mode == "huge-chunked":  # no Content-Length: the reader must count
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(40):
                await response.write(b" " * 8192)
            await response.write_eof()
            return response
        if self.mode == "not-jwks":
            return web.json_response({"keys": "nope"})
        if self.mode == "no-usable-key":
            return web.json_response({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]})
        if self.mode == "hang":
            await self.release.wait()
        if self.mode == "redirect":
            raise web.HTTPFound("/elsewhere")
        if self.mode == "error":
            raise web.HTTPServiceUnavailable()
        return web.json_response(self.document)

    async def elsewhere(self, request: web.Request) -> web.StreamResponse:
        self.hits += 100  # must never be reached
        return web.json_response({"keys": [jwk(KEY_2, "evil")]})


@pytest.fixture
async def served(aiohttp_server: Any) -> tuple[JwksServer, Any]:
    state = JwksServer()
    app = web.Application()
    app.router.add_get("/jwks", state.handle)
    app.router.add_get("/elsewhere", state.elsewhere)
    server = await aiohttp_server(app)
    return state, server


def remote(server: Any, clock: Clock | None = None, refresh: float = 600.0) -> RemoteJwks:
    return RemoteJwks(
        str(server.make_url("/jwks")), refresh, fetch=fetch_jwks, clock=clock or Clock(1000.0), timeout=0.3
    )


async def test_rotation_picked_up_on_unknown_kid(served: tuple[JwksServer, Any]) -> None:
    state, server = served
    clock = Clock(1000.0)
    source = remote(server, clock)
    assert await source.key_for("k1") and state.hits == 1
    assert isinstance(source, KeySource)
    assert source.known_keys("k1") == await source.key_for("k1")
    state.document = {"keys": [jwk(KEY_1, "k1"), jwk(KEY_2, "k2")]}  # the IdP rotates
    clock.now += 31
    # From memory alone the new kid is unknown: the answer is "ask key_for", never "no key".
    assert source.known_keys("k2") is None and state.hits == 1
    [(key, algorithms)] = await source.key_for("k2")
    assert key == KEY_2.public_key() and algorithms == ("ES256",) and state.hits == 2


async def test_flood_of_unknown_kids_fetches_once_per_30s(served: tuple[JwksServer, Any]) -> None:
    state, server = served
    clock = Clock(1000.0)
    source = remote(server, clock)
    await source.refresh()
    clock.now += 31
    results = await asyncio.gather(*(source.key_for(f"random-{n}") for n in range(100)))
    assert all(r == () for r in results)
    assert state.hits == 2  # the initial load + one re-fetch for the whole flood
    clock.now += 29
    await asyncio.gather(*(source.key_for(f"more-{n}") for n in range(100)))
    assert state.hits == 2
    clock.now += 2
    await source.key_for("again")
    assert state.hits == 3
    assert await source.key_for("k1")  # known kids never wait for the throttle


async def test_scheduled_refresh(served: tuple[JwksServer, Any]) -> None:
    state, server = served
    source = remote(server, refresh=0.05)
    await source.start()
    try:
        assert source.loaded and source.keys.kids == {"k1"}
        state.document = {"keys": [jwk(KEY_2, "k2")]}
        for _ in range(100):
            if source.keys.kids == {"k2"}:
                break
            await asyncio.sleep(0.02)
        assert source.keys.kids == {"k2"}  # no token asked for it: the schedule did
    finally:
        await source.stop()
    hits = state.hits
    await asyncio.sleep(0.15)
    assert state.hits == hits  # stopped means stopped


@pytest.mark.parametrize(
    "mode", ["garbage", "huge", "huge-chunked", "not-jwks", "no-usable-key", "error", "hang"]
)
async def test_bad_answers_keep_cached_keys(
    served: tuple[JwksServer, Any], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    state, server = served
    clock = Clock(1000.0)
    source = remote(server, clock)
    assert await source.refresh()
    state.mode = mode
    for _ in range(3):
        clock.now += 31
        assert not await source.refresh()
        assert await source.key_for("k1")
    failures = [r for r in caplog.records if "fetch failed" in r.getMessage()]
    assert len(failures) == 1  # logged once per streak
    assert "c2VjcmV0" not in caplog.text
    state.mode = "ok"
    state.release.set()
    assert await source.refresh()


async def test_server_down_keeps_cached_keys_and_verifies(served: tuple[JwksServer, Any]) -> None:
    _, server = served
    url = str(server.make_url("/jwks"))
    config = IssuerConfig(issuer="https://idp.example", audience=("erp",), jwks_url=url)
    verifier = JwtVerifier(AuthConfig(issuers=(config,)), fetch_jwks=fetch_jwks)
    await verifier.start()
    try:
        await server.close()  # the IdP goes away
        claims = {"iss": config.issuer, "aud": "erp", "sub": "u", "tid": "t"}
        now = int(time.time())
        token = jwt.encode({**claims, "iat": now, "exp": now + 60}, KEY_1, "ES256", headers={"kid": "k1"})
        assert (await verifier.verify(token)).subject == "u"
    finally:
        await verifier.stop()


async def test_redirect_not_followed(served: tuple[JwksServer, Any]) -> None:
    state, server = served
    source = remote(server)
    state.mode = "redirect"
    assert not await source.refresh()
    assert state.hits == 1 and not source.loaded and await source.key_for("evil") == ()


async def test_never_loaded_source_answers_no_key(served: tuple[JwksServer, Any]) -> None:
    _, server = served
    source = remote(server)
    await server.close()
    assert await source.key_for("k1") == ()  # never raises
    assert source.fetches == 1 and await source.key_for("k1") == () and source.fetches == 1


def test_remote_url_checked() -> None:
    for url in ("file:///etc/passwd", "ftp://idp/jwks", "/relative"):
        with pytest.raises(KeySourceError):
            RemoteJwks(url, 600, fetch=fetch_jwks)


def test_jwks_parsing_skips_unusable_keys(caplog: pytest.LogCaptureFixture) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    # fmt: off
    document = {"keys": [
        jwk(KEY_1, "enc", use="enc"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        jwk(KEY_2, "lying-alg", alg="HS256"),
        jwk(weak, "weak"),
        jwk(KEY_1, "ops", key_ops=["encrypt"]),
        {"kty": "EC", "crv": "P-256", "x": "bm90", "y": "YWtleQ", "kid": "broken"},
        "not-an-object",
        jwk(RSA_KEY, "rsa-ps", alg="PS256"),
        jwk(KEY_2, "good"),
        {**ECAlgorithm.to_jwk(KEY_1, as_dict=True), "kid": "private"},
    ]}
    # fmt: on
    keys, skipped = parse_jwks(document)
    assert keys.kids == {"rsa-ps", "good", "private"}
    assert keys.lookup("rsa-ps")[0][1] == ("PS256",)
    assert keys.lookup("private")[0][0] == KEY_1.public_key()
    assert len(skipped) == 7
    assert "c2VjcmV0" not in " ".join(skipped)  # never key material in messages


def test_lookup_rules() -> None:
    keys, _ = parse_jwks({"keys": [jwk(KEY_1, "k1")]})
    assert keys.lookup(None) and not keys.lookup("k2")
    keys, _ = parse_jwks({"keys": [jwk(KEY_1, "k1"), jwk(KEY_2, "k2")]})
    assert keys.lookup(None) == ()  # no kid and several keys: nothing to guess
    keys, _ = parse_jwks({"keys": [jwk(KEY_1, None), jwk(KEY_2, "k2")]})
    assert len(keys.lookup("k2")) == 2 and len(keys.lookup(None)) == 1


def test_a_key_set_gives_one_immutable_answer_per_question() -> None:
    """The verifier's cache treats "the same answer object" as "the same keys": every question
    (a known kid, an unknown one, none) must get one answer for the key set's life, and no
    caller can change it."""
    keys, _ = parse_jwks({"keys": [jwk(KEY_1, None), jwk(KEY_2, "k2")]})
    for kid in ("k2", "unknown", None):
        assert keys.lookup(kid) is keys.lookup(kid) and isinstance(keys.lookup(kid), tuple)
    refreshed, _ = parse_jwks({"keys": [jwk(KEY_1, None), jwk(KEY_2, "k2")]})
    assert refreshed.lookup("k2") is not keys.lookup("k2")  # a refresh is a new key set


def test_algorithms_for_key() -> None:
    assert algorithms_for_key(KEY_1.public_key()) == ("ES256",)
    assert algorithms_for_key(ec.generate_private_key(ec.SECP384R1()).public_key()) == ("ES384",)
    assert "PS256" in algorithms_for_key(RSA_KEY.public_key())
    assert algorithms_for_key(ed25519.Ed25519PrivateKey.generate().public_key()) == ("EdDSA",)
    for not_a_public_key in (KEY_1, b"secret", "secret", None):
        assert algorithms_for_key(not_a_public_key) == ()


async def test_jwks_file_and_pem_file(tmp_path: Path) -> None:
    jwks = tmp_path / "idp.jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk(KEY_1, "k1"), jwk(KEY_1, "enc", use="enc")]}))
    source = StaticKeys.from_jwks_file(jwks)
    assert source.keys.kids == {"k1"} and await source.key_for("k1")
    pem = tmp_path / "idp.pem"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem.write_bytes(RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, spki))
    [(key, algorithms)] = await StaticKeys.from_pem_file(pem).key_for(None)
    assert key == RSA_KEY.public_key() and "RS256" in algorithms


PRIVATE_PEM = KEY_1.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


BAD_FILES = {
    "jwks-missing": ("jwks", None, "cannot be read"),
    "jwks-not-json": ("jwks", b"{not json", "not valid JSON"),
    "jwks-not-a-jwks": ("jwks", b'{"kes": []}', "not a JWKS"),
    "jwks-only-enc": ("jwks", json.dumps({"keys": [jwk(KEY_1, "k", use="enc")]}).encode(), "no usable"),
    "jwks-only-hmac": ("jwks", json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).encode(), "no usable"),
    "jwks-too-large": ("jwks", b" " * (1024 * 1024 + 1), "larger than"),
    "pem-private": ("pem", PRIVATE_PEM, "private key"),
    "pem-garbage": (
        "pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "not a PEM public",
    ),
    "pem-missing": ("pem", None, "cannot be read"),
}


@pytest.mark.parametrize(("kind", "content", "message"), list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_invalid_files_give_clear_errors(
    tmp_path: Path, kind: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / "key"
    if content is not None:
        path.write_bytes(content)
    load = StaticKeys.from_jwks_file if kind == "jwks" else StaticKeys.from_pem_file
    with pytest.raises(KeySourceError, match=message) as caught:
        load(path)
    text = str(caught.value)
    assert str(path) in text
    assert "c2VjcmV0" not in text and "PRIVATE KEY-----" not in text and "MIG" not in text


def test_logging_is_quiet_for_static_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keys": [jwk(KEY_1, "k1"), {"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}))
    StaticKeys.from_jwks_file(path)
    assert any("'h'" in r.getMessage() for r in caplog.records)
    assert not any("c2VjcmV0" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("REPLACE-ME: your identity provider's public JWKS\n", "still the deployment placeholder"),
        ("\n  change-me", "still the deployment placeholder"),
        ("not json at all", "not valid JSON"),
    ],
)
def test_a_placeholder_jwks_file_is_refused_by_name(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "idp.jwks.json"
    path.write_text(text)
    with pytest.raises(KeySourceError, match=why):
        StaticKeys.from_jwks_file(path)


async def test_remote_jwks_downloads_only_through_the_fetch_it_is_given() -> None:
    calls: list[tuple[str, float, int]] = []
    answers: list[bytes | Exception] = [json.dumps({"keys": [jwk(KEY_1, "k1")]}).encode(), TimeoutError()]

    async def fetch(url: str, timeout: float, max_bytes: int) -> bytes:
        calls.append((url, timeout, max_bytes))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = Clock(1000.0)
    source = RemoteJwks(
        "https://idp.example/jwks?x=1", 600, fetch=fetch, clock=clock, timeout=0.5, max_bytes=4096
    )
    assert await source.refresh() and await source.key_for("k1")
    clock.now += 31
    assert await source.key_for("k2") == ()  # refetched (the throttle passed), failed: cached keys kept
    assert calls == [("https://idp.example/jwks?x=1", 0.5, 4096)] * 2 and await source.key_for("k1")


def test_the_auth_package_imports_no_http_library() -> None:
    # A fresh interpreter: what importing the domain pulls in, not what this test run has loaded.
    code = (
        "import sys, gateway.auth.jwt, gateway.auth.keysources, gateway.auth.bearer;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp' or m == 'gateway.context'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
