"""``GET /admin/mfa/freeze``, ``DELETE /admin/mfa/freeze`` ``{"reason"}`` and
``POST /admin/mfa/allowances`` ``{"tenant", "user", "reason", "ttl"?}``: the MFA enrolment
freeze a store reset imposes (``gateway.auth.mfa_freeze``).

Reading is open to every admin role (the console and responders need to see it); lifting and
allowing are ``gateway-admin`` only (``gateway.admin.auth``): they open enrolment to
password-only tokens (for everyone, or for one user whose identity the operator checked
outside the gateway), a decision about users' security, not an incident-containment step.
Both are audited with the actor and the reason (``mfa.enrolment_unfrozen`` in ``_system``;
``mfa.enrolment_allowed`` in the user's tenant trail and ``_system``).
"""

from __future__ import annotations

from aiohttp import web

from gateway.admin.context import ActorKey, RequestIdKey, RuntimeKey
from gateway.auth.mfa_freeze import ALLOW_TTL_DEFAULT, ALLOW_TTL_MAX, REASON_MAX, MfaEnrolmentFreeze
from gateway.config.values import parse_duration
from gateway.errors import BadRequest, NotFound
from gateway.http.json_body import json_response, read_json_object


def _freeze(request: web.Request) -> MfaEnrolmentFreeze:
    freeze = request.app[RuntimeKey]().services.mfa.freeze
    if freeze is None:
        raise NotFound("This gateway has no MFA enrolment freeze")
    return freeze


async def get_freeze(request: web.Request) -> web.Response:
    return json_response(await _freeze(request).status())


def _reason(data: dict[str, object]) -> str:
    reason = data.get("reason")
    # An operator must say why: the audit record is what a later review reads.
    if not isinstance(reason, str) or not reason.strip() or len(reason) > REASON_MAX:
        raise BadRequest(f"'reason' is required (a string of at most {REASON_MAX} characters)")
    return reason.strip()


async def lift_freeze(request: web.Request) -> web.Response:
    data = await read_json_object(request) if request.can_read_body else {}
    reason = _reason(data)
    lifted = await _freeze(request).lift(
        actor=request[ActorKey], reason=reason, request_id=request[RequestIdKey]
    )
    return json_response({"frozen": False, "lifted": lifted.public()})


async def allow_enrolment(request: web.Request) -> web.Response:
    data = await read_json_object(request)
    reason = _reason(data)
    tenant, user = data.get("tenant"), data.get("user")
    if not isinstance(tenant, str) or not isinstance(user, str):
        raise BadRequest("'tenant' and 'user' (the token's sub) are required")
    try:
        ttl = parse_duration(data.get("ttl", ALLOW_TTL_DEFAULT))
    except ValueError:
        ttl = 0.0
    if not 0 < ttl <= ALLOW_TTL_MAX:
        raise BadRequest("'ttl' must be a duration like \"15m\" (at most 24h)")
    allowance = await _freeze(request).allow(
        tenant, user, ttl=ttl, actor=request[ActorKey], reason=reason, request_id=request[RequestIdKey]
    )
    return json_response(
        {
            "tenant": allowance.tenant,
            "user": allowance.user,
            "freeze": allowance.freeze,
            "expires_at": allowance.expires_at,
        },
        status=201,
    )


def add_mfa_freeze_routes(app: web.Application) -> None:
    app.router.add_get("/admin/mfa/freeze", get_freeze)
    app.router.add_delete("/admin/mfa/freeze", lift_freeze)
    app.router.add_post("/admin/mfa/allowances", allow_enrolment)
