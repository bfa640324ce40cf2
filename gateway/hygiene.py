"""Appendix C request hygiene over a request's header values: fields that must come once, the one
transfer coding the gateway carries, and WebSocket handshakes that can succeed. The request
hygiene stage (``middleware/request_hygiene.py``) applies them before any token work.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Sequence

from multidict import CIMultiDictProxy, istr

from gateway.errors import BadRequest, NotImplementedCoding

_WEBSOCKET_KEY_BYTES = 16  # RFC 6455 §4.1: base64 of a random 16-byte nonce
_WEBSOCKET_VERSION = "13"
# istr: multidict looks them up without case-folding the name on every request.
_AUTHORIZATION = istr("Authorization")
_COOKIE = istr("Cookie")
_SEC_WEBSOCKET_KEY = istr("Sec-WebSocket-Key")
_SEC_WEBSOCKET_VERSION = istr("Sec-WebSocket-Version")


def check_singletons(headers: CIMultiDictProxy[str], token_cookie: str | None) -> None:
    # SECURITY: tenant confusion — the gateway verifies one credential, a backend that reads
    # another (the last Authorization, the first of two token cookies) acts for someone else.
    if len(headers.getall(_AUTHORIZATION, ())) > 1:
        raise BadRequest("More than one Authorization header")
    if token_cookie and cookie_count(headers.getall(_COOKIE, ()), token_cookie) > 1:
        raise BadRequest("The token cookie is present more than once")


def cookie_count(cookie_headers: Sequence[str], name: str) -> int:
    """How often ``name`` appears across every Cookie line. Deliberately naive (split on ';'):
    a name inside a quoted value counts too, so a disagreement between parsers fails closed."""
    count = 0
    for value in cookie_headers:
        for pair in value.split(";"):
            if pair.partition("=")[0].strip() == name:
                count += 1
    return count


def check_transfer_coding(codings: Sequence[str]) -> None:
    if not codings:
        return
    # SECURITY: request smuggling / silent body loss — any coding but a lone 'chunked' (coding
    # names are case-insensitive, RFC 9112 §7) is read differently by every hop (RFC 9112 §6.1).
    if len(codings) != 1 or codings[0].strip().lower() != "chunked":
        raise NotImplementedCoding("Only the chunked transfer coding is supported")


def check_websocket_handshake(headers: CIMultiDictProxy[str]) -> None:
    """RFC 6455 §4.1/§4.2.1: refused here (400) rather than failing at the upstream (502)."""
    keys = headers.getall(_SEC_WEBSOCKET_KEY, ())
    if len(keys) != 1 or not _valid_websocket_key(keys[0]):
        raise BadRequest("Invalid WebSocket handshake: Sec-WebSocket-Key")
    versions = headers.getall(_SEC_WEBSOCKET_VERSION, ())
    if len(versions) != 1 or versions[0].strip() != _WEBSOCKET_VERSION:
        # RFC 6455 §4.4: tell the client which version this server speaks.
        raise BadRequest(
            "Unsupported WebSocket version",
            headers={"Sec-WebSocket-Version": _WEBSOCKET_VERSION},
        )


def _valid_websocket_key(key: str) -> bool:
    key = key.strip()
    if not key.isascii():
        return False
    try:
        return len(b64decode(key, validate=True)) == _WEBSOCKET_KEY_BYTES
    except (binascii.Error, ValueError):
        return False
