"""``GET /admin/incidents/{id}`` (App. B): everything done under one incident id, from the audit
trail through the incident index (``gateway.audit.incidents``), oldest first.

Responders tag their containment calls with ``"incident"`` (kill switch, session revocation,
key rotation); ``incident_field`` is the one check those endpoints share.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.admin.context import AuditKey
from gateway.audit.incidents import validate_incident
from gateway.errors import BadRequest, NotFound
from gateway.http.json_body import json_response


def incident_field(data: dict[str, Any]) -> str | None:
    """The optional ``"incident"`` of an admin request body, checked (400 when malformed)."""
    value = data.get("incident")
    if value is None:
        return None
    try:
        return validate_incident(value)
    except ValueError as exc:
        raise BadRequest(f"'incident': {exc}") from None


def reason_field(data: dict[str, Any]) -> dict[str, str]:
    """The optional ``"reason"`` of a containment call (the console asks for one), as audit
    details: ``{}`` when absent, 400 when not a string of at most 500 characters."""
    value = data.get("reason")
    if value is None:
        return {}
    if not isinstance(value, str) or len(value) > 500:
        raise BadRequest("'reason' must be a string of at most 500 characters")
    return {"reason": value}


async def get_incident(request: web.Request) -> web.Response:
    try:
        incident = validate_incident(request.match_info["incident"])
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    actions, truncated = await request.app[AuditKey].incident_actions(incident)
    if not actions:
        raise NotFound("Nothing is recorded under this incident id")
    body: dict[str, Any] = {"incident": incident, "actions": actions}
    if truncated:
        body["truncated"] = True
    return json_response(body)


def add_incident_routes(app: web.Application) -> None:
    app.router.add_get("/admin/incidents/{incident}", get_incident)
