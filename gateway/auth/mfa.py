"""The gateway's own TOTP step (SPEC §6): enroll, activate, verify, recovery codes, tokens.

Pure domain logic over the state store; the HTTP handlers under ``/_gateway/mfa/`` call it.
TOTP is RFC 6238 via pyotp: 30 s steps, 6 digits, ±1 step accepted.

Storage, all under ``mfa:{tenant}:`` (registered for tenant purge); ``{u}`` is the user id in
unpadded base64url, so no user id can contain the ``:`` separator or reach another key:

- ``user:{u}`` hash: ``active`` / ``pending`` -> keyring-encrypted JSON ``{secret, eid, ...}``
  (the active record also holds the recovery-code salt); the associated data binds tenant,
  user and field, so a record cannot be moved to another user or from pending to active.
- ``recovery:{u}`` hash: field = HMAC of one unused recovery code (see ``recovery``).
- ``attempts:{u}`` failure counter (fixed window ``mfa.lockout``); ``lock:{u}`` lock-until.
- ``step:{u}`` ``"{eid}:{step}"``, the last used time step of enrollment ``eid``;
  ``used:{u}:{eid}:{step}`` short-lived claims that make each step usable exactly once.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import orjson
import pyotp
import segno

from gateway.audit.purge import register_tenant_data
from gateway.audit.record import validate_tenant
from gateway.auth import recovery
from gateway.auth.mfa_freeze import MfaEnrolmentFreeze
from gateway.auth.signing import SigningKeys
from gateway.config.model import MfaConfig
from gateway.crypto import DecryptionError, Keyring, context
from gateway.errors import BadRequest, Conflict, Forbidden, InternalError, InvalidToken, LockedOut
from gateway.state.base import StateStore

MFA_PREFIX_TEMPLATE = "mfa:{tenant}:"
# The issuer that authenticated the user's first factor, recorded in the gateway's MFA tokens
# (whose own ``iss`` is the gateway): Appendix C support identities are judged by it.
ORIGIN_ISSUER_CLAIM = "idp"
register_tenant_data(MFA_PREFIX_TEMPLATE)

INTERVAL = 30
DIGITS = 6
VALID_WINDOW = 1
_CLAIM_TTL = float((2 * VALID_WINDOW + 2) * INTERVAL)  # a step is acceptable for at most 3 steps
_MAX_USER_BYTES = 1024

MfaStatus = Literal["none", "pending", "active"]
log = logging.getLogger(__name__)


def origin_issuer(iss: object, claims: Mapping[str, Any], gateway_issuer: str) -> str | None:
    """The issuer that authenticated the user of a token issued by ``iss``: ``iss`` itself, or
    for the gateway's own MFA token the first-factor issuer it records (None when it records none).
    """
    # SECURITY: only the gateway's own tokens are believed about their origin; another
    # issuer's "idp" claim (Azure AD sets one) would let it pose as a support issuer.
    origin = claims.get(ORIGIN_ISSUER_CLAIM) if iss == gateway_issuer else iss
    return origin if isinstance(origin, str) and origin and origin != gateway_issuer else None


class InvalidCode(Forbidden):
    """A wrong, malformed or already used TOTP or recovery code (one answer for all, on purpose)."""

    title = "Invalid code"


@dataclass(frozen=True, repr=False)
class Enrollment:
    otpauth_uri: str
    secret: str
    qr_svg: str

    def __repr__(self) -> str:  # SECURITY: all three fields carry the TOTP secret
        return "Enrollment(<redacted>)"


class _Keys:
    __slots__ = ("attempts", "lock", "recovery", "step", "used", "user")

    def __init__(self, tenant: str, user: str) -> None:
        try:
            validate_tenant(tenant)
        except ValueError:
            raise BadRequest("Invalid tenant") from None
        raw = user.encode("utf-8") if isinstance(user, str) else b""
        if not raw or len(raw) > _MAX_USER_BYTES:
            raise BadRequest("Invalid user")
        base = f"mfa:{tenant}:"
        u = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        self.user, self.recovery = f"{base}user:{u}", f"{base}recovery:{u}"
        self.attempts, self.lock, self.step = f"{base}attempts:{u}", f"{base}lock:{u}", f"{base}step:{u}"
        self.used = f"{base}used:{u}:"


class MfaService:
    def __init__(
        self,
        store: StateStore,
        keyring: Keyring,
        config: MfaConfig,
        *,
        clock: Callable[[], float] = time.time,
        issuer_name: str = "ShopinoERP",
        freeze: MfaEnrolmentFreeze | None = None,
        store_timeout: float | None = None,
    ) -> None:
        self._store, self._keyring, self._config = store, keyring, config
        self._clock, self._issuer_name = clock, issuer_name
        self.freeze = freeze  # after a store reset, enrolment waits for an operator
        self._store_timeout = store_timeout  # the freeze check's longest wait on the store

    # -- enrollment ----------------------------------------------------------------------------
    async def enroll(self, tenant: str, user: str, *, mfa_backed: bool) -> Enrollment:
        """A new pending secret. An active user keeps the old one until the new is activated."""
        keys = _Keys(tenant, user)
        await self._check_not_frozen(tenant, user)
        if not mfa_backed and await self._store.hget(keys.user, "active") is not None:
            # SECURITY: a stolen password alone must not replace the second factor.
            raise Conflict("MFA is already active; re-enrolling needs an MFA-backed token")
        secret = pyotp.random_base32()  # 32 base32 characters: 160 bits, RFC 4226's recommendation
        pending = {"secret": secret, "eid": secrets.token_hex(8), "created_at": self._clock()}
        await self._store.hset(keys.user, "pending", self._seal(tenant, user, "pending", pending))
        uri = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL).provisioning_uri(
            name=f"{user} ({tenant})", issuer_name=self._issuer_name
        )
        return Enrollment(otpauth_uri=uri, secret=secret, qr_svg=_qr_svg(uri))

    async def activate(self, tenant: str, user: str, code: str) -> list[str]:
        """Check a code of the pending secret, make it active, return fresh recovery codes."""
        keys = _Keys(tenant, user)
        allowed = await self._check_not_frozen(tenant, user)
        await self._check_lock(keys)
        pending = await self._open(keys, tenant, user, "pending")
        if pending is None:
            raise Conflict("No MFA enrollment is pending")
        attempt = await self._count_attempt(keys)
        if not await self._accept_totp(keys, pending, code):
            await self._fail(keys, attempt)
        # Removing the pending record is the atomic claim: of two concurrent activations (with
        # two valid codes) one installs its secret and recovery codes, the other gets 409.
        if await self._store.hdel(keys.user, "pending") != 1:
            raise Conflict("No MFA enrollment is pending")
        codes = recovery.generate()
        salt = recovery.new_salt()
        active = {
            "secret": pending["secret"],
            "eid": pending["eid"],
            "activated_at": self._clock(),
            "recovery_salt": base64.b64encode(salt).decode("ascii"),
        }
        await self._store.hset(keys.user, "active", self._seal(tenant, user, "active", active))
        await self._store.delete(keys.recovery)  # codes of an earlier enrollment die with it
        for code_text in codes:
            normalized = recovery.normalize(code_text)
            assert normalized is not None
            await self._store.hset(keys.recovery, recovery.digest(salt, normalized), b"1")
        await self._store.delete(keys.attempts)
        if allowed and self.freeze is not None:
            await self.freeze.consume_allowance(tenant, user)  # one enrolment per allowance
        return codes

    # -- verification --------------------------------------------------------------------------
    async def verify_code(self, tenant: str, user: str, code: str) -> None:
        """Return if ``code`` is a fresh TOTP of the active secret; else raise ``InvalidCode``,
        or ``LockedOut`` (with ``Retry-After``) once ``max_attempts`` failures are reached."""
        keys = _Keys(tenant, user)
        await self._check_lock(keys)
        active = await self._require_active(keys, tenant, user)
        attempt = await self._count_attempt(keys)
        if not await self._accept_totp(keys, active, code):
            await self._fail(keys, attempt)
        await self._store.delete(keys.attempts)

    async def verify_recovery_code(self, tenant: str, user: str, code: str) -> None:
        """Consume one recovery code; under the same lockout as TOTP codes."""
        keys = _Keys(tenant, user)
        await self._check_lock(keys)
        active = await self._require_active(keys, tenant, user)
        attempt = await self._count_attempt(keys)
        normalized = recovery.normalize(code)
        if normalized is None:
            await self._fail(keys, attempt)
        field = recovery.digest(base64.b64decode(active["recovery_salt"]), normalized)
        # SECURITY: hdel is the atomic consume: of two concurrent uses exactly one removes it.
        if await self._store.hdel(keys.recovery, field) != 1:
            await self._fail(keys, attempt)
        await self._store.delete(keys.attempts)

    async def recovery_codes_left(self, tenant: str, user: str) -> int:
        return len(await self._store.hgetall(_Keys(tenant, user).recovery))

    async def mint_access_token(
        self,
        first_factor_claims: Mapping[str, Any],
        signing: SigningKeys,
        *,
        tenant_claim: str = "tid",
        roles_claim: str = "roles",
    ) -> tuple[str, int]:
        """The gateway's MFA-backed token for the user of ``first_factor_claims`` (call only after
        a successful ``verify_code``/``verify_recovery_code``). Returns (token, expires_in)."""
        sub, tenant = first_factor_claims.get("sub"), first_factor_claims.get(tenant_claim)
        audience = first_factor_claims.get("aud")
        if not isinstance(sub, str) or not sub or not isinstance(tenant, str) or not audience:
            raise InvalidToken("The first-factor token lacks sub, tenant or aud")
        given = first_factor_claims.get("amr") or ()
        amr = [given] if isinstance(given, str) else [m for m in given if isinstance(m, str)]
        if "otp" not in amr:
            amr.append("otp")
        now = int(self._clock())
        ttl = int(self._config.token_ttl)
        claims: dict[str, Any] = {
            "iss": self._config.issuer,
            "sub": sub,
            "aud": audience,  # Appendix B: copied from the first-factor token
            tenant_claim: tenant,
            "amr": amr,
            "auth_time": now,
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_urlsafe(16),
        }
        if roles_claim in first_factor_claims:
            claims[roles_claim] = first_factor_claims[roles_claim]
        if origin := origin_issuer(first_factor_claims.get("iss"), first_factor_claims, self._config.issuer):
            claims[ORIGIN_ISSUER_CLAIM] = origin
        return signing.sign(claims), ttl

    # -- administration ------------------------------------------------------------------------
    async def status(self, tenant: str, user: str) -> MfaStatus:
        fields = await self._store.hgetall(_Keys(tenant, user).user)
        return "active" if "active" in fields else "pending" if "pending" in fields else "none"

    async def reset(self, tenant: str, user: str) -> None:
        """Forget the user's MFA entirely (an admin act: the user enrolls again)."""
        keys = _Keys(tenant, user)
        claims = await self._store.keys(keys.used)
        await self._store.delete(keys.user, keys.recovery, keys.attempts, keys.lock, keys.step, *claims)

    async def reencrypt(self) -> int:
        """Rewrite secrets not encrypted under the primary master key; returns how many."""
        count = 0
        for key in await self._store.keys("mfa:"):
            parts = key.split(":")
            if len(parts) != 4 or parts[2] != "user":
                continue
            _, tenant, _, u = parts
            user = base64.urlsafe_b64decode(u + "=" * (-len(u) % 4)).decode("utf-8")
            for field, value in (await self._store.hgetall(key)).items():
                if self._keyring.needs_rotation(value):
                    ctx = _context(tenant, user, field)
                    await self._store.hset(key, field, self._keyring.reencrypt(value, context=ctx))
                    count += 1
        return count

    # -- internals -----------------------------------------------------------------------------
    async def _check_not_frozen(self, tenant: str, user: str) -> bool:
        # SECURITY: after a store reset the store may have forgotten this user's enrolment, and a
        # stolen password would then bind a new factor; ``MfaEnrolmentFrozen`` until an operator
        # lifts the freeze or allows this user (gateway.auth.mfa_freeze). True: allowed so.
        if self.freeze is None:
            return False
        return await self.freeze.check_enrolment(self._store_timeout, tenant=tenant, user=user)

    def _seal(self, tenant: str, user: str, field: str, record: Mapping[str, Any]) -> bytes:
        return self._keyring.encrypt(orjson.dumps(record), context=_context(tenant, user, field))

    async def _open(self, keys: _Keys, tenant: str, user: str, field: str) -> dict[str, Any] | None:
        value = await self._store.hget(keys.user, field)
        if value is None:
            return None
        try:
            return dict(orjson.loads(self._keyring.decrypt(value, context=_context(tenant, user, field))))
        except DecryptionError as exc:
            log.error("mfa: a stored %s secret cannot be decrypted: %s", field, exc)
            raise InternalError("MFA state cannot be read") from None

    async def _require_active(self, keys: _Keys, tenant: str, user: str) -> dict[str, Any]:
        active = await self._open(keys, tenant, user, "active")
        if active is None:
            raise Conflict("MFA is not active for this user")
        return active

    async def _accept_totp(self, keys: _Keys, record: Mapping[str, Any], code: object) -> bool:
        if not isinstance(code, str) or len(code) != DIGITS or not (code.isascii() and code.isdigit()):
            return False
        totp = pyotp.TOTP(record["secret"], digits=DIGITS, interval=INTERVAL)
        try:
            # Constant-time comparison inside pyotp; returns the matched step, which replay needs.
            step = totp.verify_and_get_timecode(code, for_time=self._clock(), valid_window=VALID_WINDOW)
        except pyotp.exceptions.OTPVerificationError:
            return False
        eid = record["eid"]
        last = await self._store.get(keys.step)
        last_eid, _, last_step = (last or b"").decode("ascii").partition(":")
        if last_eid == eid and step <= int(last_step):
            return False  # SECURITY: replay - this step, or an older one, was already used
        # SECURITY: replay - the claim is atomic, so two concurrent uses of one code cannot both pass.
        claim = f"{keys.used}{eid}:{step}"
        if not await self._store.set(claim, b"1", ttl=_CLAIM_TTL, only_if_absent=True):
            return False
        await self._store.set(keys.step, f"{eid}:{step}".encode("ascii"))
        return True

    async def _check_lock(self, keys: _Keys) -> None:
        raw = await self._store.get(keys.lock)
        if raw is None:
            return
        remaining = float(raw) - self._clock()
        if remaining > 0:
            raise _locked_out(remaining)
        # The store ttl is the backstop; by our clock the lockout is over, so is its window.
        await self._store.delete(keys.lock, keys.attempts)

    async def _count_attempt(self, keys: _Keys) -> int:
        # Counted before checking, so concurrent guesses cannot exceed the budget.
        attempt = await self._store.incr(keys.attempts, ttl=self._config.lockout)
        if attempt > self._config.max_attempts:
            await self._lock(keys)
        return attempt

    async def _fail(self, keys: _Keys, attempt: int) -> NoReturn:
        if attempt >= self._config.max_attempts:
            await self._lock(keys)  # the lockout starts with the failure that reaches the limit
        raise InvalidCode("The code is invalid or was already used")

    async def _lock(self, keys: _Keys) -> NoReturn:
        lockout = self._config.lockout
        await self._store.set(keys.lock, repr(self._clock() + lockout).encode("ascii"), ttl=lockout)
        raise _locked_out(lockout)


def _context(tenant: str, user: str, field: str) -> bytes:
    return context("mfa-secret", tenant, user, field)


def _locked_out(seconds: float) -> LockedOut:
    retry_after = str(max(1, math.ceil(seconds)))
    return LockedOut("Too many failed attempts; try again later", headers={"Retry-After": retry_after})


def _qr_svg(uri: str) -> str:
    # segno: a maintained, dependency-free QR encoder; a standalone SVG document (with namespace,
    # so it also works as an <img> data URI), error correction M as authenticator apps expect.
    buffer = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(buffer, kind="svg", scale=4, xmldecl=False, nl=False)
    return buffer.getvalue().decode("utf-8")


__all__ = ["MFA_PREFIX_TEMPLATE", "Enrollment", "InvalidCode", "MfaService", "MfaStatus"]
