"""Cheap refusals on the lean listener (issue 13): a problem+json answer written from bytes.

A flood of refusals (429s over a ``pre_auth`` limit, 401s of a token sprayer) answers the same
head and body again and again; only the request id differs, plus Retry-After and the
RateLimit values, which change once a second. So the answer is rendered once per shape by the
one renderer (``gateway.http.problem.refusal_headers`` and ``problem_body``, with a marker for the
request id), split at the marker, and each refusal joins the parts around its id: one
transport write, no aiohttp ``Response`` and no multidict per refusal; each is still counted
(``gateway.http.problem.note_refusal``). The head's framing lines (Content-Length, Date,
Connection) are added by the same rules as ``LeanDownstream._head``. Anything a template
cannot express falls back to that general path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp.helpers import rfc822_formatted_time

from gateway.bounded_memo import remember
from gateway.errors import GatewayError, RequestTimeout
from gateway.http.problem import note_refusal, problem_body, refusal_headers, render_problem
from gateway.http1.downstream import REASONS

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.http1.downstream import LeanDownstream

_MARKER = "0rid-c0ffee-m4rker0"  # a request id's alphabet: orjson and the head carry it verbatim
_MARKER_BYTES = _MARKER.encode("ascii")
_TEMPLATE_LIMIT = 512  # shapes remembered; a handful per refusal type and second in practice
_OWN_LINES = frozenset(("content-length", "transfer-encoding", "date", "connection"))
_KEEP_ALIVE_10 = b"Connection: keep-alive\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"
_END = b"\r\n"

Key = tuple[object, ...]


class _Template:
    """Head up to the id, head after it up to the Content-Length value, body around the id."""

    __slots__ = ("body_after", "body_before", "body_fixed", "head_after", "head_before", "status")

    def __init__(self, status: int, head: tuple[bytes, bytes], body: tuple[bytes, bytes]) -> None:
        self.status = status
        self.head_before, self.head_after = head
        self.body_before, self.body_after = body
        self.body_fixed = len(self.body_before) + len(self.body_after)


_templates: dict[Key, _Template | None] = {}
_date: tuple[str, bytes] = ("", b"")


async def send_problem(error: GatewayError, ctx: RequestContext, down: LeanDownstream) -> None:
    """``error`` as the answer to ``ctx``'s request: what ``render_problem`` would produce."""
    request = down.request
    template = _template_for(error, ctx, request.version)
    if template is None:
        await down.send_response(render_problem(error, ctx, ctx.request_id))
        return
    note_refusal(error, ctx)
    protocol = down.protocol
    keep_alive = protocol.may_keep_alive(request) and not isinstance(error, RequestTimeout)
    rid = ctx.request_id.encode("ascii")
    if not keep_alive:
        end = _CLOSE
    elif request.version < (1, 1):
        end = _KEEP_ALIVE_10
    else:
        end = _END
    head = (
        template.head_before,
        rid,
        template.head_after,
        b"%d\r\nDate: " % (template.body_fixed + len(rid)),
        _date_bytes(),
        end,
    )
    down.started_as(template.status, keep_alive)
    if request.method == "HEAD":
        protocol.write(b"".join(head))
    else:
        down.body_length = template.body_fixed + len(rid)
        protocol.write(b"".join((*head, template.body_before, rid, template.body_after)))
    if protocol.writing_paused:  # nearly never for a small answer: no coroutine for nothing
        await protocol.drain()


def _date_bytes() -> bytes:
    global _date
    text = rfc822_formatted_time()  # aiohttp's, recomputed once a second
    if text is not _date[0]:
        _date = (text, f"{text}\r\n".encode("ascii"))
    return _date[1]


def _template_for(error: GatewayError, ctx: RequestContext, version: tuple[int, int]) -> _Template | None:
    # Everything but the request id that shapes the bytes; the ctx's own X-Request-ID entry is
    # never sent (the refusal's id is set first), so it is left out of the key.
    own = tuple(ctx.response_headers.items())
    if own and own[0][0] == "X-Request-ID":
        own = own[1:]  # begin_request sets it first: no copy of the dict for the common case
    elif "X-Request-ID" in ctx.response_headers:
        own = tuple(pair for pair in own if pair[0] != "X-Request-ID")
    key = (
        type(error),
        error.detail,
        tuple(error.extensions.items()),
        tuple(error.headers.items()),
        own,
        ctx.runtime.tls,
        version,
    )
    try:
        return _templates[key]
    except KeyError:
        pass
    except TypeError:
        return None  # an extension value that cannot be hashed (a list): the general path
    template = _build(error, ctx, version)
    return remember(_templates, _TEMPLATE_LIMIT, key, template)


def _build(error: GatewayError, ctx: RequestContext, version: tuple[int, int]) -> _Template | None:
    body = problem_body(error, _MARKER).split(_MARKER_BYTES)
    lines = [f"HTTP/{version[0]}.{version[1]} {error.status} {REASONS.get(error.status, '')}\r\n"]
    for name, value in refusal_headers(error, ctx, _MARKER).items():
        if name.lower() in _OWN_LINES:
            return None  # a framing or connection line of a stage's own: the general path decides
        lines.append(f"{name}: {value}\r\n")
    lines.append("Content-Length: ")
    text = "".join(lines)
    # SECURITY: response splitting — as in LeanDownstream._head, a CR or LF inside a name or
    # value would start a new header; every line above ends in exactly one CRLF.
    if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
        raise ValueError("a response header contains a line break")
    head = text.encode("utf-8", "surrogateescape").split(_MARKER_BYTES)
    if len(head) != 2 or len(body) != 2 or error.status in (204, 304) or error.status < 200:
        return None
    return _Template(error.status, (head[0], head[1]), (body[0], body[1]))
