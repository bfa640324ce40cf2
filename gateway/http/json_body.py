"""Small JSON request bodies (admin calls, the MFA step): bounded (``gateway.http.request_body``), an
object, or a 400/413."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import BadRequest
from gateway.http.request_body import BodyRequest, read_bounded_body

MAX_JSON_BODY = 4096


async def read_json_object(request: BodyRequest, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
    raw = await read_bounded_body(request, limit, "The request body is too large")
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("The body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object")
    return data


def json_response(body: object, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer the gateway builds itself; never cached unless ``headers`` say otherwise."""
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )
