"""Admin authentication: static bearer tokens from ``admin.tokens``, stored as SHA-256 hashes.

Admin JWTs (``admin.jwt_issuers``) are verified once JWT verification exists; until then a
JWT presented here is simply not a known static token and is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from gateway.errors import MissingToken

_REALM = 'Bearer realm="shopino-admin"'


def identify_admin(authorization: str | None, tokens: Mapping[str, str]) -> str:
    """The name of the static token presented, or a refusal."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise MissingToken("An admin bearer token is required", headers={"WWW-Authenticate": _REALM})
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    name = None
    # SECURITY: compare against every stored hash in constant time (token guessing by timing).
    for stored, token_name in tokens.items():
        if hmac.compare_digest(stored, digest):
            name = token_name
    if name is None:
        raise MissingToken(
            "The admin token is not valid",
            headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
        )
    return name
