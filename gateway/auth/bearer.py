"""RFC 6750 bearer tokens of the public listener: where a request carries one, and the refusals
every token check shares (the authentication stage, the ``/_gateway/mfa/`` endpoints, tenancy),
including RFC 9470's step-up refusal for a token without a (recent enough) second factor.

One refusal for every bad token: the reason is logged and counted, never told to the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

import structlog
from multidict import istr

from gateway.auth.jwt import VerifiedClaims, has_mfa, mfa_fresh
from gateway.auth.metrics import AUTH_FAILURES
from gateway.auth.revocation import RevocationEpochs
from gateway.errors import InvalidToken, MfaRequired

log = structlog.get_logger("gateway.auth")
_AUTHORIZATION = istr("Authorization")  # istr: no case folding per request
REALM = 'Bearer realm="shopino"'


def invalid_token() -> InvalidToken:
    """RFC 6750 ``invalid_token``: the one refusal for every bad token; the reason is logged and
    counted by the caller, never told to the client."""
    return InvalidToken(
        "The bearer token is not valid", headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
    )


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    header = headers.get(_AUTHORIZATION, "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer":
        token = token.strip()
        if token:
            return token
    return None


def ensure_not_revoked(revocations: RevocationEpochs, claims: VerifiedClaims, request_id: str) -> None:
    """SPEC §5: tokens issued at or before a revocation are refused (memory only, no store call)."""
    if revocations.is_revoked(claims.tenant, claims.subject, claims.issued_at):
        refuse_revoked(request_id)


def refuse_revoked(request_id: str) -> NoReturn:
    AUTH_FAILURES.labels("revoked").inc()
    log.info("token_rejected", reason="revoked", request_id=request_id)
    raise invalid_token()


def mfa_shortfall(
    claims: VerifiedClaims, accepted_amr: Sequence[str], max_age: float | None, now: float
) -> str | None:
    """Why the token's second factor does not do (``mfa_missing``, ``mfa_stale``), or None."""
    if not has_mfa(claims, accepted_amr):
        return "mfa_missing"
    if max_age is not None and not mfa_fresh(claims, max_age, now):
        return "mfa_stale"
    return None


def mfa_required(shortfall: str, max_age: float | None) -> MfaRequired:
    """The step-up refusal for ``mfa_shortfall``'s answer."""
    if shortfall == "mfa_missing":
        return MfaRequired(
            "This route needs a multi-factor authenticated token",
            headers={
                "WWW-Authenticate": f'{REALM}, error="insufficient_user_authentication", '
                'error_description="A multi-factor authentication is required"'
            },
        )
    assert max_age is not None
    # RFC 9470 §3: max_age tells the client how recent the authentication must be.
    return MfaRequired(
        "This route needs a recent multi-factor authentication",
        headers={
            "WWW-Authenticate": f'{REALM}, error="insufficient_user_authentication", '
            f'error_description="A more recent authentication is required", max_age={int(max_age)}'
        },
    )
