"""Parser refusals of the lean listener (App. C): what llhttp refused, or a limit checked inside
a parser callback, as the gateway's error; and that error's answer on the wire, after which the
connection closes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping

import httptools

from gateway.context import request_id_for
from gateway.errors import BadRequest, GatewayError, NotImplementedCoding
from gateway.http.problem import count_refusal, problem_body, problem_headers
from gateway.http1.downstream import REASONS
from gateway.routing import method_not_allowed

_CODING_REFUSAL = re.compile(
    r"Invalid `Transfer-Encoding` header value|Request has invalid `Transfer-Encoding`"
)


class Refused(Exception):
    """Raised inside a parser callback: llhttp stops, the connection answers ``error`` and closes."""

    def __init__(self, error: GatewayError) -> None:
        self.error = error


class ParserRefusal:
    __slots__ = ("error",)

    def __init__(self, error: GatewayError) -> None:
        self.error = error


def parser_error(exc: Exception, data: bytes) -> GatewayError:
    """The App. C answer to what the parser refused (see request_hygiene.parser_refusal)."""
    cause = exc.__context__
    if isinstance(cause, Refused):
        return cause.error
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        # llhttp knows no TRACK: no route can list it, so it is 405 like TRACE/CONNECT.
        if data.startswith(b"TRACK ") or b"\nTRACK " in data:
            return method_not_allowed()
        return BadRequest("The request could not be parsed")
    if _CODING_REFUSAL.match(str(exc)):
        return NotImplementedCoding("Only the chunked transfer coding is supported")
    return BadRequest("The request could not be parsed")  # TE with CL, two CLs, bad chunking…


def answer_refusal(
    transport: asyncio.Transport | None, error: GatewayError, identity_headers: Mapping[str, str]
) -> None:
    """The parser's refusal, as the gateway's problem+json over HTTP/1.1 (App. C), announcing the
    close (the caller closes)."""
    request_id = request_id_for(None)
    headers = problem_headers(error)
    headers["X-Request-ID"] = request_id
    headers.update(identity_headers)
    body = problem_body(error, request_id)
    count_refusal(error)
    lines = [f"HTTP/1.1 {error.status} {REASONS.get(error.status, '')}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    lines.append(f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    if transport is not None:
        transport.write("".join(lines).encode("latin-1") + body)
