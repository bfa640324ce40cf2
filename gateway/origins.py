"""App. B origin rules over plain values: which origins a route's CORS policy admits and what a
preflight is answered with, and the CSRF rule for cookie-carried tokens, which judges origins by
the same lists. The CORS stage (``middleware/cors.py``) and the authentication stage
(``middleware/authenticate.py``) apply them.
"""

from __future__ import annotations

from multidict import MultiMapping, istr

from gateway.config.model import CorsPolicy
from gateway.errors import Forbidden
from gateway.metrics import METRICS

SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
# Never a write origin: "null" is what sandboxed frames, file: pages and some redirects send
# (any site can produce it), and "*" is a wildcard in a policy, not an origin.
_NOT_ORIGINS = frozenset(("null", "*"))
_UPGRADE, _ORIGIN = istr("Upgrade"), istr("Origin")  # istr: no case folding per request


def preflight_headers(policy: CorsPolicy, origin: str, method: str, requested: str) -> dict[str, str]:
    if method.upper() not in policy.methods:
        return {}
    allowed = {h.lower() for h in policy.headers}
    wanted = [h.strip() for h in requested.split(",") if h.strip()]
    if any(h.lower() not in allowed for h in wanted):
        return {}
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ", ".join(policy.methods),
        "Access-Control-Allow-Headers": ", ".join(policy.headers),
        "Access-Control-Max-Age": str(int(policy.max_age)),
    }
    if policy.credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def origin_allowed(policy: CorsPolicy, origin: str) -> bool:
    return origin in policy.origins or ("*" in policy.origins and not policy.credentials)


def check_cookie_origin(method: str, headers: MultiMapping[str], policy: CorsPolicy | None) -> None:
    """App. B CSRF: a request authenticated by the token cookie that changes something (an
    unsafe method, or a WebSocket upgrade) needs an ``Origin`` listed in the route's ``cors``
    ``policy``; a route without one (``None``) accepts no origin. Called by authentication when
    it takes the token from the cookie (a token in ``Authorization`` is exempt: a browser never
    attaches it to a cross-site request by itself).
    """
    # SECURITY: cross-site WebSocket hijacking: the browser sends the cookie on a cross-site
    # upgrade (a GET) as well, and the socket then reads and writes as the user.
    if method in SAFE_METHODS and "websocket" not in headers.get(_UPGRADE, "").lower():
        return
    origins = headers.getall(_ORIGIN, ())
    # SECURITY: CSRF. No Origin (Referer is not consulted: it is stripped by policies and
    # proxies, and a fallback would be a second, weaker rule), several, "null" or one not listed.
    if (
        policy is not None
        and len(origins) == 1
        and origins[0] not in _NOT_ORIGINS
        and origins[0] in policy.origins
    ):
        return
    METRICS.auth_failures.labels("csrf_origin").inc()
    raise Forbidden("A cookie-authenticated request that changes data needs an allowed Origin")
