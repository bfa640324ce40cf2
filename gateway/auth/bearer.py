"""RFC 6750 bearer tokens of the public listener: where a request carries one, and the refusals
every token check shares (the authentication stage, the ``/_gateway/mfa/`` endpoints, tenancy).

One refusal for every bad token: the reason is logged and counted, never told to the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NoReturn

import structlog

from gateway.auth.jwt import VerifiedClaims
from gateway.auth.revocation import RevocationEpochs
from gateway.errors import InvalidToken
from gateway.metrics import METRICS

log = structlog.get_logger("gateway.auth")
REALM = 'Bearer realm="shopino"'


def invalid_token() -> InvalidToken:
    """RFC 6750 ``invalid_token``: the one refusal for every bad token; the reason is logged and
    counted by the caller, never told to the client."""
    return InvalidToken(
        "The bearer token is not valid", headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
    )


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if any."""
    header = headers.get("Authorization", "")
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
    METRICS.auth_failures.labels("revoked").inc()
    log.info("token_rejected", reason="revoked", request_id=request_id)
    raise invalid_token()
