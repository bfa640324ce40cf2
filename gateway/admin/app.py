"""Admin API application: config (masked), reload, metrics; every call authenticated."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from gateway.admin.audit_api import add_audit_routes
from gateway.admin.auth import authorize, identify_admin, require_step_up
from gateway.admin.console_api import add_console_api_routes
from gateway.admin.context import (
    ActorKey,
    AuditKey,
    IntegrationsKey,
    RequestIdKey,
    RevocationsKey,
    RolesKey,
    RuntimeKey,
    SigningKey,
)
from gateway.admin.grants_api import add_grant_routes
from gateway.admin.incidents_api import add_incident_routes
from gateway.admin.integrations_api import add_integration_routes
from gateway.admin.keys_api import add_key_routes
from gateway.admin.killswitch_api import add_killswitch_routes
from gateway.admin.lockouts_api import add_lockout_routes
from gateway.admin.mfa_freeze_api import add_mfa_freeze_routes
from gateway.admin.sessions_api import add_session_routes
from gateway.audit import AuditTrail
from gateway.auth.revocation import RevocationEpochs
from gateway.auth.signing import SigningKeys
from gateway.auth.webhooks import IntegrationSecrets
from gateway.config.effective import effective_config
from gateway.config.errors import ConfigError
from gateway.console.assets import API_CSP, add_console_routes, console_headers, is_console_request
from gateway.context import request_id_for
from gateway.errors import (
    BadRequest,
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
)
from gateway.http.answer_headers import HSTS
from gateway.http.json_body import json_response
from gateway.http.problem import problem_headers, problem_response
from gateway.metrics import render_metrics
from gateway.runtime import Runtime

log = structlog.get_logger("gateway.admin")
Reloader = Callable[[str, str | None], Awaitable[Runtime]]
ReloadKey = web.AppKey[Reloader]("reload")  # a callable type: the type argument, not a class


@web.middleware
async def admin_errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request_id = request_id_for(request.headers.get("X-Request-ID"))
    request[RequestIdKey] = request_id
    try:
        if is_console_request(request):
            # The console's files are public (no secret in them); what they do needs a token.
            return await _console_answer(request, handler, request_id)
        runtime = request.app[RuntimeKey]()
        identity = await identify_admin(
            request.headers.get("Authorization"),
            runtime.admin_tokens,
            runtime.admin_verifier,
            runtime.config.mfa.accepted_amr,
        )
        authorize(identity, request.method, request.path)
        require_step_up(identity, request.method, runtime.config.admin.mfa_max_age, time.time())
        request[ActorKey] = identity.actor
        request[RolesKey] = identity.roles
        response = await handler(request)
    except web.HTTPNotFound:
        response = _problem(NotFound("No such admin endpoint"), request_id)
    except web.HTTPMethodNotAllowed as exc:
        allow = {"Allow": exc.headers.get("Allow", "")}
        response = _problem(MethodNotAllowed("Method not allowed here", headers=allow), request_id)
    except GatewayError as error:
        response = _problem(error, request_id)
    except Exception:
        log.exception("admin_request_failed", request_id=request_id)
        response = _problem(InternalError(), request_id)
    response.headers["X-Request-ID"] = request_id
    _gateway_headers(request, response)
    # Data, never documents, never cached (the console reads these with a bearer token).
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("Content-Security-Policy", API_CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def _console_answer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], request_id: str
) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException:
        response = _problem(NotFound("No such console file"), request_id)
    except GatewayError as error:
        response = _problem(error, request_id)
    _gateway_headers(request, response)
    console_headers(response)
    return response


def _gateway_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Appendix C "every answer is the gateway's": on a TLS admin listener, HSTS too."""
    response.headers["Server"] = "shopino-gateway"
    if request.app[RuntimeKey]().config.admin.tls.mode != "off":
        response.headers["Strict-Transport-Security"] = HSTS


def _problem(error: GatewayError, request_id: str) -> web.Response:
    return problem_response(error, request_id, problem_headers(error), traffic=False)


async def get_config(request: web.Request) -> web.Response:
    return json_response(effective_config(request.app[RuntimeKey]().config))


async def post_reload(request: web.Request) -> web.Response:
    request_id = request[RequestIdKey]
    try:
        runtime = await request.app[ReloadKey](request[ActorKey], request_id)
    except ConfigError as exc:
        # The operator needs the key paths to fix the file; they hold no secrets by design.
        raise BadRequest(
            "The new config is invalid; the current one keeps serving", extensions={"errors": exc.errors}
        ) from None
    return json_response(
        {"reloaded": True, "generation": runtime.generation, "source": runtime.config.source}
    )


async def get_metrics(request: web.Request) -> web.Response:
    body, content_type = render_metrics()
    return web.Response(body=body, headers={"Content-Type": content_type})


def make_admin_app(
    current_runtime: Callable[[], Runtime],
    reload: Reloader,
    audit: AuditTrail,
    signing: SigningKeys,
    revocations: RevocationEpochs,
    integrations: IntegrationSecrets,
) -> web.Application:
    app = web.Application(middlewares=[admin_errors_middleware], client_max_size=1024 * 1024)
    app[RuntimeKey] = current_runtime
    app[ReloadKey] = reload
    app[AuditKey] = audit
    app[SigningKey] = signing
    app[RevocationsKey] = revocations
    app[IntegrationsKey] = integrations
    add_integration_routes(app)
    add_audit_routes(app)
    add_key_routes(app)
    add_session_routes(app)
    add_killswitch_routes(app)
    add_lockout_routes(app)
    add_incident_routes(app)
    add_grant_routes(app)
    add_mfa_freeze_routes(app)
    add_console_api_routes(app)
    add_console_routes(app)
    app.router.add_get("/admin/config", get_config)
    app.router.add_post("/admin/reload", post_reload)
    app.router.add_get("/metrics", get_metrics)
    return app
