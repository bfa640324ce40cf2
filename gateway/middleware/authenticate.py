"""SPEC §5: every route needs a valid token unless it says ``auth: none``.

No token issuer is configurable yet (the ``auth`` section arrives with JWT verification), so
the set of trusted issuers is empty and every presented token is invalid: the stage fails
closed rather than letting ``auth: jwt`` routes through unchecked.
"""

from __future__ import annotations

from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import InvalidToken, MissingToken
from gateway.metrics import METRICS

_REALM = 'Bearer realm="shopino"'


def bearer_token(request: web.BaseRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(ctx: RequestContext) -> web.StreamResponse | None:
    if ctx.route is None or ctx.route.auth == "none":
        return None
    if bearer_token(ctx.request) is None:
        METRICS.auth_failures.labels("missing_token").inc()
        raise MissingToken("A bearer token is required", headers={"WWW-Authenticate": _REALM})
    # SECURITY: no trusted issuer → no token can be valid (fail closed).
    METRICS.auth_failures.labels("no_trusted_issuer").inc()
    raise InvalidToken(
        "The bearer token is not valid",
        headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
    )
