"""The one problem+json renderer (SPEC §13, App. B): every refusal the gateway answers itself is
rendered from here, and counted here (``shopino_gateway_refusals_total{type}``), whichever
listener answers it.

Owned here and nowhere else: the document's members (``problem_body``), the type URIs, the
content type and the headers every problem carries (``problem_headers``), and the count.
- A refused request with a context (a pipeline stage, the proxy): ``render_problem`` on the
  aiohttp listener; the lean listener writes the same bytes from templates that
  ``gateway.http1.problem`` builds once per shape with ``problem_body`` and ``refusal_headers``,
  and counts each refusal with ``note_refusal`` (no per-refusal rendering: a measured saving).
- A refusal with no context (the HTTP parser's on either listener): ``problem_response``
  (aiohttp), or ``count_refusal`` beside the lean listener's raw write. The admin API renders
  with ``problem_response`` too, uncounted: its refusals are not public traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError, Isolated, RequestTimeout
from gateway.http.answer_headers import HSTS
from gateway.metrics import METRICS

if TYPE_CHECKING:
    from gateway.context import RequestContext

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:shopino-gateway:"


def problem_body(error: GatewayError, request_id: str | None) -> bytes:
    """The RFC 9457 body for ``error``; extensions never override the standard members."""
    body: dict[str, Any] = dict(error.extensions)
    body.update(
        type=TYPE_PREFIX + error.slug,
        title=error.title,
        status=error.status,
        detail=error.detail,
        request_id=request_id,
    )
    return orjson.dumps(body)


def problem_headers(error: GatewayError) -> dict[str, str]:
    """The headers of every problem, then the error's own (Retry-After, Allow, WWW-Authenticate)."""
    headers = {"Content-Type": PROBLEM_CONTENT_TYPE, "Cache-Control": "no-store"}
    headers.update(error.headers)
    return headers


def count_refusal(error: GatewayError) -> None:
    """One refusal answered (every path here, and the raw writes that cannot use a Response)."""
    METRICS.count_refusal(error.slug)


def problem_response(
    error: GatewayError, request_id: str | None, headers: dict[str, str], *, traffic: bool = True
) -> web.Response:
    """``error`` as an aiohttp response with ``headers`` (from ``problem_headers``), counted when
    it refused public ``traffic`` (the admin API's refusals are not: they would mix operators'
    401s into the public refusal rate that dashboards and alerts watch)."""
    if traffic:
        METRICS.count_refusal(error.slug)
    response = web.Response(status=error.status, body=problem_body(error, request_id), headers=headers)
    if isinstance(error, RequestTimeout):
        response.force_close()  # the rest of the body is never read: the connection cannot be reused
    return response


def render_problem(error: GatewayError, ctx: RequestContext, request_id: str) -> web.Response:
    """A refusal of ``ctx``'s request on the aiohttp listener (SPEC §13), recorded and counted."""
    headers = refusal_headers(error, ctx, request_id)
    _record(error, ctx)
    return problem_response(error, request_id, headers)


def refusal_headers(error: GatewayError, ctx: RequestContext, request_id: str) -> dict[str, str]:
    """A refused request's headers, in the order they go out: the problem's, the request id,
    nosniff, HSTS on TLS, then the context's own (identity, CORS, RateLimit…)."""
    headers = problem_headers(error)
    headers["X-Request-ID"] = request_id
    headers["X-Content-Type-Options"] = "nosniff"
    if ctx.runtime.tls:
        headers["Strict-Transport-Security"] = HSTS
    for name, value in ctx.response_headers.items():
        headers.setdefault(name, value)
    return headers


def note_refusal(error: GatewayError, ctx: RequestContext) -> None:
    """What the access line and the metrics record of every refusal of a request (counted)."""
    _record(error, ctx)
    METRICS.count_refusal(error.slug)


def _record(error: GatewayError, ctx: RequestContext) -> None:
    ctx.status = error.status
    ctx.refusal = error.slug
    if isinstance(error, Isolated):
        ctx.killswitch_id = error.switch_id
