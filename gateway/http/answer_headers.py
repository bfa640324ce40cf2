"""The headers every answer of the gateway carries (App. C "every answer is the gateway's"):
its own Server, nosniff and, on TLS listeners, HSTS. A leaf module: the listeners, the
problem renderer and the admin app all take them from here."""

from __future__ import annotations

from multidict import istr

HSTS = "max-age=31536000; includeSubDomains"
# SECURITY: fingerprinting — neither aiohttp's nor Python's version is disclosed; HSTS on TLS.
# istr keys: an answer's headers are a CIMultiDict, which takes an istr without case-folding it
# again (these are added to every answer); in a plain dict they are the same strings.
_PLAIN: dict[str, str] = {istr("Server"): "shopino-gateway", istr("X-Content-Type-Options"): "nosniff"}
IDENTITY_BY_TLS: dict[bool, dict[str, str]] = {
    False: _PLAIN,
    True: {**_PLAIN, istr("Strict-Transport-Security"): HSTS},
}
"""``identity_headers`` as a table, for the per-request path (no call). Shared: do not modify."""


def identity_headers(*, tls: bool) -> dict[str, str]:
    """The headers every answer of the public listener carries (App. C). Shared: do not modify."""
    return IDENTITY_BY_TLS[tls]
