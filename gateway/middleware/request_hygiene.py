"""Appendix C request hygiene: fields that must come once, the one transfer coding the gateway
carries, and WebSocket handshakes that can succeed — refused before any token work, and before
an upstream is contacted.

Not checked here because they cannot arrive: a second ``Host`` or ``Content-Length`` (equal or
differing) and two ``Transfer-Encoding`` lines are refused by aiohttp's parser (C and pure
Python alike) before the gateway sees the request; the listener answers those 400 problem+json.
The end-to-end tests send each of them, so a parser that starts accepting one is noticed.
"""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from collections.abc import Sequence

from aiohttp import http_exceptions, web
from multidict import CIMultiDictProxy

from gateway.context import RequestContext
from gateway.errors import BadRequest, GatewayError, NotImplementedCoding
from gateway.routing import method_not_allowed
from gateway.upstream.forwarding import wants_websocket

_WEBSOCKET_KEY_BYTES = 16  # RFC 6455 §4.1: base64 of a random 16-byte nonce
_WEBSOCKET_VERSION = "13"
# How aiohttp's parsers (C and pure Python) word the refusals ``parser_refusal`` maps; the
# end-to-end tests send each case, so a change of wording in aiohttp is noticed there.
# llhttp knows no TRACK: it refuses the request line, quoting it.
_TRACK_LINE = re.compile(r"Invalid method encountered:\s+b'TRACK ")
_PARSER_CODING_REFUSAL = re.compile(
    r"Invalid `Transfer-Encoding` header value|Request has invalid `Transfer-Encoding`"
    r"|Duplicate 'Transfer-Encoding' header"
)


async def check_request_hygiene(ctx: RequestContext) -> web.StreamResponse | None:
    headers = ctx.request.headers
    check_singletons(headers, ctx.runtime.config.auth.token_cookie)
    check_transfer_coding(headers.getall("Transfer-Encoding", ()))
    if wants_websocket(ctx.request):
        if ctx.request.version < (1, 1):
            raise BadRequest("A WebSocket handshake needs HTTP/1.1")  # RFC 6455 §4.1
        check_websocket_handshake(headers)
    return None


def check_singletons(headers: CIMultiDictProxy[str], token_cookie: str | None) -> None:
    # SECURITY: tenant confusion — the gateway verifies one credential, a backend that reads
    # another (the last Authorization, the first of two token cookies) acts for someone else.
    if len(headers.getall("Authorization", ())) > 1:
        raise BadRequest("More than one Authorization header")
    if token_cookie and cookie_count(headers.getall("Cookie", ()), token_cookie) > 1:
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
    keys = headers.getall("Sec-WebSocket-Key", ())
    if len(keys) != 1 or not _valid_websocket_key(keys[0]):
        raise BadRequest("Invalid WebSocket handshake: Sec-WebSocket-Key")
    versions = headers.getall("Sec-WebSocket-Version", ())
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


def parser_refusal(exc: BaseException | None) -> GatewayError | None:
    """The App. C answer to a request the HTTP parser refused before the pipeline ran, where
    that answer is not the generic 400: TRACK (unknown to llhttp, so no route can list it) →
    405, a transfer coding other than a lone ``chunked`` → 501, as ``check_transfer_coding``
    answers those that get past the parser. ``None``: the listener's generic answer."""
    if not isinstance(exc, http_exceptions.BadHttpMessage):
        return None
    message = str(exc.message)
    if isinstance(exc, http_exceptions.BadHttpMethod):
        return method_not_allowed() if _TRACK_LINE.match(message) else None
    if _PARSER_CODING_REFUSAL.match(message):
        return NotImplementedCoding("Only the chunked transfer coding is supported")
    return None  # Transfer-Encoding with Content-Length among them: smuggling, a plain 400
