"""Appendix C request hygiene: fields that must come once, the one transfer coding the gateway
carries, and WebSocket handshakes that can succeed — refused before any token work, and before
an upstream is contacted. The rules over header values are ``gateway.hygiene``; this stage
applies them, and ``parser_refusal`` answers what aiohttp's parser refused first.

Not checked here because they cannot arrive: a second ``Host`` or ``Content-Length`` (equal or
differing) and two ``Transfer-Encoding`` lines are refused by aiohttp's parser (C and pure
Python alike) before the gateway sees the request; the listener answers those 400 problem+json.
The end-to-end tests send each of them, so a parser that starts accepting one is noticed.
"""

from __future__ import annotations

import re

from aiohttp import http_exceptions, web
from multidict import istr

from gateway.context import RequestContext
from gateway.errors import BadRequest, GatewayError, NotImplementedCoding
from gateway.hygiene import check_singletons, check_transfer_coding, check_websocket_handshake
from gateway.routing import method_not_allowed
from gateway.upstream.forwarding import wants_websocket

# How aiohttp's parsers (C and pure Python) word the refusals ``parser_refusal`` maps; the
# end-to-end tests send each case, so a change of wording in aiohttp is noticed there.
# llhttp knows no TRACK: it refuses the request line, quoting it.
_TRANSFER_ENCODING = istr("Transfer-Encoding")  # istr: no case folding per request
_UPGRADE = istr("Upgrade")
_TRACK_LINE = re.compile(r"Invalid method encountered:\s+b'TRACK ")
_PARSER_CODING_REFUSAL = re.compile(
    r"Invalid `Transfer-Encoding` header value|Request has invalid `Transfer-Encoding`"
    r"|Duplicate 'Transfer-Encoding' header"
)


def check_request_hygiene(ctx: RequestContext) -> web.StreamResponse | None:
    request = ctx.request
    headers = request.headers
    check_singletons(headers, ctx.runtime.config.auth.token_cookie)
    codings = headers.getall(_TRANSFER_ENCODING, ())
    if codings:  # check_transfer_coding passes no coding at all: no call for it
        check_transfer_coding(codings)
    # wants_websocket needs an Upgrade header: without one (nearly every request) no call.
    if _UPGRADE in headers and wants_websocket(request):
        if request.version < (1, 1):
            raise BadRequest("A WebSocket handshake needs HTTP/1.1")  # RFC 6455 §4.1
        check_websocket_handshake(headers)
    return None


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
