"""The gateway's TOTP step on both store backends, with codes from pyotp and an injected clock:
the flow, the ±1 step window, replay, lockout, recovery codes, re-enrollment, encryption at
rest, tenant purge, and the MFA-backed token."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time

import jwt
import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.purge import registered_tenant_data
from gateway.auth import mfa as mfa_module
from gateway.auth import recovery
from gateway.auth.mfa import MFA_PREFIX_TEMPLATE, InvalidCode, MfaService
from gateway.auth.signing import SigningKeys
from gateway.config.model import MfaConfig
from gateway.crypto import ENV_VAR, Keyring
from gateway.errors import BadRequest, Conflict, InternalError, InvalidToken, LockedOut
from gateway.state import StateStore, open_store
from tests.support.timing import Clock

MAX_EXAMPLES = 50 if os.environ.get("CI") == "true" else 300
KEY_1 = base64.b64encode(bytes(range(32))).decode()
KEY_2 = base64.b64encode(bytes(range(50, 82))).decode()
KEYRING = Keyring.from_env({ENV_VAR: f"k1:{KEY_1}"})
CONFIG = MfaConfig(issuer="https://gw.test", token_ttl=900.0, max_attempts=5, lockout=900.0)
CODE_RE = re.compile(r"[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}-[0-9a-hjkmnp-tv-z]{4}")


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_025.0)  # 15 s into a time step


@pytest.fixture
def service(store: StateStore, clock: Clock) -> MfaService:
    return MfaService(store, KEYRING, CONFIG, clock=clock)


def code(secret: str, clock: Clock, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(clock.now, counter_offset=steps)


def wrong_codes(secret: str, clock: Clock, count: int = 1) -> list[str]:
    """Six-digit codes that match no step of the ±1 window right now."""
    valid = {code(secret, clock, steps) for steps in (-1, 0, 1)}
    return [guess for guess in (f"{n:06d}" for n in range(count + 3)) if guess not in valid][:count]


async def enrolled(
    service: MfaService, clock: Clock, tenant: str = "acme", user: str = "alice"
) -> tuple[str, list[str]]:
    enrollment = await service.enroll(tenant, user, mfa_backed=False)
    codes = await service.activate(tenant, user, code(enrollment.secret, clock))
    clock.now += 30  # the activation step is used up
    return enrollment.secret, codes


async def test_enroll_activate_verify(service: MfaService, clock: Clock) -> None:
    assert await service.status("acme", "alice") == "none"
    enrollment = await service.enroll("acme", "alice", mfa_backed=False)
    assert await service.status("acme", "alice") == "pending"
    assert re.fullmatch(r"[A-Z2-7]{32}", enrollment.secret)  # 160 bits
    assert pyotp.parse_uri(enrollment.otpauth_uri).secret == enrollment.secret
    assert (
        enrollment.otpauth_uri.startswith("otpauth://totp/ShopinoERP:")
        and "issuer=ShopinoERP" in enrollment.otpauth_uri
    )
    assert enrollment.qr_svg.startswith("<svg") and enrollment.qr_svg.endswith("</svg>")
    assert enrollment.secret not in repr(enrollment)
    with pytest.raises(Conflict):
        await service.verify_code("acme", "alice", code(enrollment.secret, clock))  # not active yet
    codes = await service.activate("acme", "alice", code(enrollment.secret, clock))
    assert await service.status("acme", "alice") == "active"
    assert len(codes) == 10 == len(set(codes)) and all(CODE_RE.fullmatch(c) for c in codes)
    assert await service.recovery_codes_left("acme", "alice") == 10
    clock.now += 30
    await service.verify_code("acme", "alice", code(enrollment.secret, clock))
    with pytest.raises(Conflict):
        await service.activate("acme", "alice", code(enrollment.secret, clock, 1))  # nothing pending


@pytest.mark.parametrize(
    "bad",
    [
        "000000",
        "12345",
        "1234567",
        "abcdef",
        "\uff11\uff12\uff13\uff14\uff15\uff16",
        " 12345",
        "",
        "1" * 5000,
    ],
)
async def test_wrong_and_malformed_codes(service: MfaService, clock: Clock, bad: str) -> None:
    secret, _ = await enrolled(service, clock)
    if bad == "000000":
        bad = wrong_codes(secret, clock)[0]
    with pytest.raises(InvalidCode) as info:
        await service.verify_code("acme", "alice", bad)
    assert info.value.status == 403 and info.value.detail == "The code is invalid or was already used"


async def test_window_is_one_step_each_way(service: MfaService, clock: Clock) -> None:
    secret, _ = await enrolled(service, clock)
    clock.now += 300
    with pytest.raises(InvalidCode):
        await service.verify_code("acme", "alice", code(secret, clock, -2))
    with pytest.raises(InvalidCode):
        await service.verify_code("acme", "alice", code(secret, clock, 2))
    await service.verify_code("acme", "alice", code(secret, clock, -1))
    await service.verify_code("acme", "alice", code(secret, clock, 1))  # newer than the last: fine


async def test_replay_of_the_same_code_is_refused(service: MfaService, clock: Clock) -> None:
    enrollment = await service.enroll("acme", "alice", mfa_backed=False)
    activation_code = code(enrollment.secret, clock)
    await service.activate("acme", "alice", activation_code)
    with pytest.raises(InvalidCode):  # the activation step counts as used
        await service.verify_code("acme", "alice", activation_code)
    clock.now += 30
    await service.verify_code("acme", "alice", code(enrollment.secret, clock))
    clock.now += 10  # same step, a few seconds later
    with pytest.raises(InvalidCode):
        await service.verify_code("acme", "alice", code(enrollment.secret, clock))


async def test_previous_step_after_a_newer_one_is_refused(service: MfaService, clock: Clock) -> None:
    secret, _ = await enrolled(service, clock)
    clock.now += 300
    older, newer = code(secret, clock, -1), code(secret, clock)
    await service.verify_code("acme", "alice", newer)
    with pytest.raises(InvalidCode):
        await service.verify_code("acme", "alice", older)  # still inside the window, but stale


async def test_concurrent_use_of_one_code_succeeds_once(store_url: str, clock: Clock) -> None:
    async with open_store(store_url) as one, open_store(store_url) as two:
        first, second = (
            MfaService(one, KEYRING, CONFIG, clock=clock),
            MfaService(two, KEYRING, CONFIG, clock=clock),
        )
        secret, _ = await enrolled(first, clock)
        same = code(secret, clock)
        results = await asyncio.gather(
            *(svc.verify_code("acme", "alice", same) for svc in (first, second, first, second)),
            return_exceptions=True,
        )
        assert sum(result is None for result in results) == 1
        assert all(isinstance(r, InvalidCode) for r in results if r is not None)


async def test_concurrent_activations_install_one_secret(store_url: str, clock: Clock) -> None:
    async with open_store(store_url) as one, open_store(store_url) as two:
        first, second = (
            MfaService(one, KEYRING, CONFIG, clock=clock),
            MfaService(two, KEYRING, CONFIG, clock=clock),
        )
        enrollment = await first.enroll("acme", "alice", mfa_backed=False)
        results = await asyncio.gather(
            first.activate("acme", "alice", code(enrollment.secret, clock)),
            second.activate("acme", "alice", code(enrollment.secret, clock, 1)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, list)]
        assert len(winners) == 1 and all(isinstance(r, Conflict) for r in results if not isinstance(r, list))
        await first.verify_recovery_code("acme", "alice", winners[0][0])
        assert await first.recovery_codes_left("acme", "alice") == 9


async def test_lockout_after_max_attempts_with_retry_after(service: MfaService, clock: Clock) -> None:
    secret, _ = await enrolled(service, clock)
    for _ in range(CONFIG.max_attempts - 1):
        with pytest.raises(InvalidCode):
            await service.verify_code("acme", "alice", wrong_codes(secret, clock)[0])
    with pytest.raises(LockedOut) as info:  # the lockout starts with the failure reaching the limit
        await service.verify_code("acme", "alice", wrong_codes(secret, clock)[0])
    assert info.value.headers == {"Retry-After": "900"} and info.value.status == 429
    clock.now += 100
    with pytest.raises(LockedOut) as info:  # even the right code
        await service.verify_code("acme", "alice", code(secret, clock))
    assert info.value.headers == {"Retry-After": "800"}
    with pytest.raises(LockedOut):
        await service.verify_recovery_code("acme", "alice", "0000-0000-0000")
    other = await service.enroll("acme", "bob", mfa_backed=False)  # per user, not per tenant
    await service.activate("acme", "bob", code(other.secret, clock))
    clock.now += 800
    await service.verify_code("acme", "alice", code(secret, clock))


async def test_success_resets_the_failure_count(service: MfaService, clock: Clock) -> None:
    secret, _ = await enrolled(service, clock)
    for _round in range(3):
        for _ in range(CONFIG.max_attempts - 1):
            with pytest.raises(InvalidCode):
                await service.verify_recovery_code("acme", "alice", "zzzz-zzzz-zzzz")
        await service.verify_code("acme", "alice", code(secret, clock))
        clock.now += 30


async def test_concurrent_guesses_cannot_exceed_the_budget(service: MfaService, clock: Clock) -> None:
    secret, _ = await enrolled(service, clock)
    guesses = wrong_codes(secret, clock, 12)
    results = await asyncio.gather(
        *(service.verify_code("acme", "alice", guess) for guess in guesses), return_exceptions=True
    )
    assert sum(isinstance(r, InvalidCode) for r in results) <= CONFIG.max_attempts - 1
    assert all(isinstance(r, InvalidCode | LockedOut) for r in results)
    with pytest.raises(LockedOut):
        await service.verify_code("acme", "alice", code(secret, clock))


async def test_recovery_codes_are_one_time(service: MfaService, clock: Clock) -> None:
    _, codes = await enrolled(service, clock)
    await service.verify_recovery_code("acme", "alice", codes[0])
    with pytest.raises(InvalidCode):
        await service.verify_recovery_code("acme", "alice", codes[0])
    await service.verify_recovery_code("acme", "alice", f"  {codes[1].upper().replace('-', ' ')} ")
    typed = codes[2].replace("1", "l").replace("0", "O")  # misread characters still work
    await service.verify_recovery_code("acme", "alice", typed)
    assert await service.recovery_codes_left("acme", "alice") == 7
    with pytest.raises(InvalidCode):  # another user's codes are not this user's
        _, bobs = await enrolled(service, clock, user="bob")
        await service.verify_recovery_code("acme", "alice", bobs[0])


async def test_concurrent_double_use_of_a_recovery_code(store_url: str, clock: Clock) -> None:
    async with open_store(store_url) as one, open_store(store_url) as two:
        services = [MfaService(s, KEYRING, CONFIG, clock=clock) for s in (one, two)]
        _, codes = await enrolled(services[0], clock)
        results = await asyncio.gather(
            *(services[i % 2].verify_recovery_code("acme", "alice", codes[3]) for i in range(4)),
            return_exceptions=True,
        )
        assert sum(result is None for result in results) == 1
        assert all(isinstance(r, InvalidCode) for r in results if r is not None)


async def test_reenroll_needs_mfa_backed_token(service: MfaService, clock: Clock) -> None:
    old_secret, old_codes = await enrolled(service, clock)
    with pytest.raises(Conflict) as info:
        await service.enroll("acme", "alice", mfa_backed=False)
    assert info.value.status == 409
    fresh = await service.enroll("acme", "alice", mfa_backed=True)
    assert fresh.secret != old_secret and await service.status("acme", "alice") == "active"
    await service.verify_code("acme", "alice", code(old_secret, clock))  # old one still active
    clock.now += 30
    with pytest.raises(InvalidCode):
        await service.verify_code("acme", "alice", code(fresh.secret, clock))  # not yet
    new_codes = await service.activate("acme", "alice", code(fresh.secret, clock))
    clock.now += 30
    with pytest.raises(InvalidCode):
        await service.verify_code("acme", "alice", code(old_secret, clock))
    with pytest.raises(InvalidCode):
        await service.verify_recovery_code("acme", "alice", old_codes[0])
    await service.verify_recovery_code("acme", "alice", new_codes[0])
    await service.verify_code("acme", "alice", code(fresh.secret, clock))


async def test_secrets_are_encrypted_at_rest(service: MfaService, store: StateStore, clock: Clock) -> None:
    secret, codes = await enrolled(service, clock)
    pending = await service.enroll("acme", "alice", mfa_backed=True)
    dump = b""
    for key in await store.keys(""):
        if key.startswith("mfa:acme:user:") or key.startswith("mfa:acme:recovery:"):
            dump += b"".join(k.encode() + v for k, v in (await store.hgetall(key)).items())
        else:
            dump += await store.get(key) or b""
    assert dump.count(b"v1.k1.") == 2  # active and pending records
    for plain in (secret, pending.secret, *codes, *(c.replace("-", "") for c in codes)):
        for form in (plain, plain.lower(), plain.upper()):
            assert form.encode() not in dump
    assert b"alice" not in dump


async def test_records_cannot_be_swapped_between_users(
    service: MfaService, store: StateStore, clock: Clock
) -> None:
    await enrolled(service, clock, user="alice")
    await enrolled(service, clock, user="mallory")
    user_keys = sorted(k for k in await store.keys("mfa:acme:user:"))
    values = [await store.hget(k, "active") for k in user_keys]
    assert all(values)
    await store.hset(user_keys[0], "active", values[1] or b"")
    with pytest.raises(InternalError) as info:
        await service.verify_code("acme", "alice" if "YWxpY2U" in user_keys[0] else "mallory", "123456")
    assert "cannot be read" in info.value.detail


async def test_purge_prefix_removes_every_mfa_key_of_the_tenant(
    service: MfaService, store: StateStore, clock: Clock
) -> None:
    assert MFA_PREFIX_TEMPLATE in registered_tenant_data()
    secret, codes = await enrolled(service, clock, tenant="acme")
    await service.verify_code("acme", "alice", code(secret, clock))
    await service.verify_recovery_code("acme", "alice", codes[0])
    for _ in range(CONFIG.max_attempts):
        with pytest.raises((InvalidCode, LockedOut)):
            await service.verify_recovery_code("acme", "alice", "zzzz-zzzz-zzzz")
    await service.enroll("acme", "bob", mfa_backed=False)
    written = await store.keys("")
    assert written and all(key.startswith("mfa:acme:") for key in written)
    assert {key.split(":")[2] for key in written} >= {"user", "recovery", "step", "used", "lock", "attempts"}
    await enrolled(service, clock, tenant="acme2")
    await enrolled(service, clock, tenant="acm")
    others = set(await store.keys("")) - set(written)
    for template in registered_tenant_data():
        await store.delete_prefix(template.format(tenant="acme"))
    assert set(await store.keys("")) == others
    assert (
        await service.status("acme", "alice") == "none" and await service.status("acme2", "alice") == "active"
    )


async def test_reset(service: MfaService, store: StateStore, clock: Clock) -> None:
    # base64url("alice") is a prefix of base64url("alice2"): reset must not touch alice2's keys
    secret, _ = await enrolled(service, clock, user="alice")
    await enrolled(service, clock, user="alice2")
    await service.verify_code("acme", "alice", code(secret, clock))
    with pytest.raises(InvalidCode):
        await service.verify_recovery_code("acme", "alice", "zzzz-zzzz-zzzz")
    await service.reset("acme", "alice")
    assert await service.status("acme", "alice") == "none"
    assert await service.status("acme", "alice2") == "active"
    remaining = await store.keys("")
    assert remaining and all("YWxpY2Uy" in key for key in remaining)
    await enrolled(service, clock, user="alice")  # may enroll afresh without an MFA-backed token


async def test_invalid_tenant_or_user(service: MfaService) -> None:
    for tenant, user in (("a:b", "alice"), ("", "alice"), ("acme", ""), ("acme", "x" * 2000)):
        with pytest.raises(BadRequest):
            await service.enroll(tenant, user, mfa_backed=False)


async def test_access_token(service: MfaService, store: StateStore, clock: Clock) -> None:
    clock.now = float(int(time.time()))
    signing = SigningKeys(store, KEYRING, clock=clock)
    await signing.load()
    first = {
        "iss": "https://idp",
        "sub": "alice",
        "tid": "acme",
        "roles": ["clerk"],
        "aud": ["erp", "x"],
        "amr": ["pwd"],
        "iat": int(clock.now) - 60,
        "exp": int(clock.now) + 600,
        "auth_time": 1,
    }
    token, expires_in = await service.mint_access_token(first, signing)
    assert expires_in == 900
    kid = jwt.get_unverified_header(token)["kid"]
    [(key, algorithms)] = await signing.key_for(kid)
    claims = jwt.decode(token, key, algorithms=list(algorithms), audience="erp", issuer="https://gw.test")
    assert claims["sub"] == "alice" and claims["tid"] == "acme" and claims["roles"] == ["clerk"]
    assert claims["aud"] == ["erp", "x"] and claims["amr"] == ["pwd", "otp"]
    assert claims["auth_time"] == claims["iat"] == int(clock.now) and claims["exp"] - claims["iat"] == 900
    second, _ = await service.mint_access_token(first, signing)
    assert jwt.decode(second, key, algorithms=["ES256"], audience="erp")["jti"] != claims["jti"]
    single, _ = await service.mint_access_token({**first, "amr": "pwd"}, signing)
    assert jwt.decode(single, key, algorithms=["ES256"], audience="erp")["amr"] == ["pwd", "otp"]
    for missing in ("sub", "tid", "aud"):
        with pytest.raises(InvalidToken):
            await service.mint_access_token({k: v for k, v in first.items() if k != missing}, signing)


async def test_access_token_records_the_first_factor_issuer(
    service: MfaService, store: StateStore, clock: Clock
) -> None:
    # Appendix C support identities are judged by the issuer that authenticated the user, which
    # the gateway's own token (iss: the gateway) would otherwise hide.
    clock.now = float(int(time.time()))
    signing = SigningKeys(store, KEYRING, clock=clock)
    await signing.load()
    first = {"iss": "https://idp", "sub": "sam", "tid": "t", "aud": "erp", "amr": ["pwd"], "idp": "https://x"}

    async def idp_of(claims: dict[str, object]) -> object:
        token, _ = await service.mint_access_token(claims, signing)
        [(key, _algorithms)] = await signing.key_for(jwt.get_unverified_header(token)["kid"])
        return jwt.decode(token, key, algorithms=["ES256"], audience="erp").get("idp")

    assert await idp_of(first) == "https://idp"  # another issuer's own "idp" claim is not believed
    assert await idp_of({**first, "iss": "https://gw.test", "idp": "https://idp"}) == "https://idp"  # renewed
    assert await idp_of({**first, "iss": "https://gw.test", "idp": 5}) is None
    assert await idp_of({**first, "iss": "https://gw.test", "idp": "https://gw.test"}) is None


async def test_rfc6238_reference_vectors(
    service: MfaService, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RFC 6238 Appendix B (SHA-1 seed "12345678901234567890"); 6-digit codes are the last 6 digits.
    rfc_secret = base64.b32encode(b"12345678901234567890").decode()
    monkeypatch.setattr(mfa_module.pyotp, "random_base32", lambda: rfc_secret)
    vectors = [
        (59, "94287082"),
        (1111111109, "07081804"),
        (1111111111, "14050471"),
        (1234567890, "89005924"),
        (2000000000, "69279037"),
        (20000000000, "65353130"),
    ]
    await service.enroll("acme", "alice", mfa_backed=False)
    clock.now = vectors[0][0]
    await service.activate("acme", "alice", vectors[0][1][-6:])
    for at, expected in vectors[1:]:
        clock.now = at
        await service.verify_code("acme", "alice", expected[-6:])


async def test_reencrypt_after_master_key_rotation(
    service: MfaService, store: StateStore, clock: Clock
) -> None:
    secret, codes = await enrolled(service, clock)
    await service.enroll("acme", "alice", mfa_backed=True)
    rotated = Keyring.from_env({ENV_VAR: f"k2:{KEY_2},k1:{KEY_1}"})
    assert await MfaService(store, rotated, CONFIG, clock=clock).reencrypt() == 2
    only_new = MfaService(store, Keyring.from_env({ENV_VAR: f"k2:{KEY_2}"}), CONFIG, clock=clock)
    assert await only_new.reencrypt() == 0
    await only_new.verify_code("acme", "alice", code(secret, clock))
    await only_new.verify_recovery_code("acme", "alice", codes[0])


@settings(max_examples=MAX_EXAMPLES, database=None)
@given(text=st.text(max_size=40))
def test_recovery_normalize_property(text: str) -> None:
    normalized = recovery.normalize(text)
    assert normalized is None or (len(normalized) == 12 and set(normalized) <= set(recovery.ALPHABET))


def test_recovery_codes_roundtrip_and_entropy() -> None:
    codes = recovery.generate(200)
    assert len(set(codes)) == 200
    assert all(recovery.normalize(c) == c.replace("-", "") for c in codes)
    salt = recovery.new_salt()
    assert recovery.digest(salt, "0" * 12) != recovery.digest(recovery.new_salt(), "0" * 12)
