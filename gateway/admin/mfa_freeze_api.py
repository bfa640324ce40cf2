"""``GET /admin/mfa/freeze`` and ``DELETE /admin/mfa/freeze`` ``{"reason"}``: the
MFA enrolment freeze a store reset imposes (``gateway.auth.mfa_freeze``).

Reading is open to every admin role (the console and responders need to see it); lifting is
``gateway-admin`` only (``gateway.admin.auth``): it re-opens enrolment to password-only tokens,
a decision about the security of every user, not an incident-containment step. The lift is
audited in ``_system`` as ``mfa.enrolment_unfrozen`` with the actor and the reason.
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.context import ActorKey, RequestIdKey, RuntimeKey
from gateway.auth.mfa_freeze import REASON_MAX, MfaEnrolmentFreeze
from gateway.errors import BadRequest, NotFound
from gateway.json_body import json_response, read_json_object


def _freeze(request: web.Request) -> MfaEnrolmentFreeze:
    freeze = request.app[RuntimeKey]().services.mfa.freeze
    if freeze is None:
        raise NotFound("This gateway has no MFA enrolment freeze")
    return freeze


async def get_freeze(request: web.Request) -> web.Response:
    return json_response(await _freeze(request).status())


async def lift_freeze(request: web.Request) -> web.Response:
    data = await read_json_object(request) if request.can_read_body else {}
    reason = data.get("reason")
    # An operator must say why: the audit record is what a later review reads.
    if not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX:
        raise BadRequest(f"'reason' is required (a string of at most {REASON_MAX} characters)")
    lifted = await _freeze(request).lift(
        actor=request[ActorKey], reason=reason.strip(), request_id=request[RequestIdKey]
    )
    return json_response({"frozen": False, "lifted": lifted.public()})


def add_mfa_freeze_routes(app: web.Application) -> None:
    app.router.add_get("/admin/mfa/freeze", get_freeze)
    app.router.add_delete("/admin/mfa/freeze", lift_freeze)
