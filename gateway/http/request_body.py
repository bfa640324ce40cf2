"""The one bounded request-body reader (SPEC §10, App. C): every stage or endpoint that holds a
body in memory (webhook signatures, counted body fields, JSON calls) reads it here, and the
route stage refuses what is known too large up front with the same rules.

- Framing: a body framed both by ``Content-Length`` and ``Transfer-Encoding`` is refused 400
  (any coding but exactly ``chunked`` was already refused by the parser: 501, App. C).
- Limit: a declared ``Content-Length`` over the limit is refused 413 before a byte is read; a
  chunked body is counted as it arrives and refused 413 at the first chunk past the limit, so
  no more than ``limit`` bytes (plus one chunk) are ever held.
- Body timeout (App. C ``listen.limits.body_timeout``): the listener fails a stalled body's
  stream with ``RequestTimeout``; it reaches the reader's caller as is, answered 408.
The proxy's streamed upload counts its bytes against the same route limit as it forwards them
(``gateway.proxy``): it never holds the body.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import StreamReader
from multidict import CIMultiDictProxy, istr

from gateway.errors import BadRequest, PayloadTooLarge

TOO_LARGE_FOR_ROUTE = "The request body is larger than this route allows"
_CHUNK = 64 * 1024
# istr: multidict looks them up without case-folding the name on every request.
_CONTENT_LENGTH, _TRANSFER_ENCODING = istr("Content-Length"), istr("Transfer-Encoding")


class BodyRequest(Protocol):
    """What reading a body needs of a request: both listeners' requests have it."""

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content(self) -> StreamReader: ...


def refuse_unframed_or_oversized(request: BodyRequest, limit: int | None) -> None:
    """The route stage's check, before any byte is read: framing, then the declared length."""
    headers = request.headers
    # SECURITY: request smuggling — a body framed two ways is refused, not guessed at.
    if _CONTENT_LENGTH in headers and _TRANSFER_ENCODING in headers:
        raise BadRequest("Conflicting body framing")
    if limit is not None and (request.content_length or 0) > limit:
        raise PayloadTooLarge(TOO_LARGE_FOR_ROUTE)


def refuse_declared_oversize(request: BodyRequest, limit: int, detail: str = TOO_LARGE_FOR_ROUTE) -> None:
    """413 when the declared length is over ``limit`` (before a 100-continue is sent)."""
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(detail)


async def read_bounded_body(request: BodyRequest, limit: int, detail: str = TOO_LARGE_FOR_ROUTE) -> bytes:
    """The whole body, at most ``limit`` bytes, else 413 ``detail`` (declared or counted)."""
    # SECURITY: memory exhaustion — a body is held whole only up to its limit.
    refuse_declared_oversize(request, limit, detail)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(detail)
        chunks.append(chunk)
    return b"".join(chunks)
