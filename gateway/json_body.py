"""Small JSON request bodies (admin calls, the MFA step): bounded, an object, or a 400/413."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import BadRequest, PayloadTooLarge

MAX_JSON_BODY = 4096


async def read_json_object(request: web.BaseRequest, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge("The request body is too large")
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge("The request body is too large")
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("The body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object")
    return data
