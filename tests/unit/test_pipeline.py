"""SPEC §3 makes the pipeline's order part of the contract ("cheap checks shed attackers before
costly ones"): this pins it, so a stage moved in ``gateway/pipeline.py`` fails here first."""

from __future__ import annotations

import asyncio
import types
from typing import cast

import pytest
from aiohttp import web

from gateway import pipeline
from gateway.context import RequestContext
from gateway.middleware import StageResult
from gateway.middleware.authenticate import authenticate
from gateway.middleware.body_limit import enforce_body_limit
from gateway.middleware.cors import apply_cors
from gateway.middleware.header_limits import enforce_header_limits
from gateway.middleware.killswitch import check_killswitch, check_tenant_killswitch
from gateway.middleware.login_outcome import check_login_outcome
from gateway.middleware.rate_limit import limit_pre_auth, limit_route
from gateway.middleware.request_hygiene import check_request_hygiene
from gateway.middleware.route import resolve_route
from gateway.middleware.tenancy import apply_tenancy
from gateway.middleware.tenant_echo import check_tenant_echo
from gateway.middleware.webhook import verify_webhook


def test_the_stages_run_in_the_spec_order() -> None:
    spec_order = (
        enforce_header_limits,  # listen.limits: the cheapest refusal, before anything is parsed
        check_request_hygiene,  # App. C singletons, codings, WebSocket handshake
        resolve_route,  # §3.2 canonical path + route match
        apply_cors,  # §3.2 preflights before authentication
        check_killswitch,  # §3.3 identity-free switches
        limit_pre_auth,  # §3.4 by client IP, before any token work
        enforce_body_limit,  # §10 max_body on the declared length
        authenticate,  # §3.5 tokens, MFA, revocation
        apply_tenancy,  # §3.6 acting tenant, roles, grants
        check_tenant_killswitch,  # §3.3 tenant switches once the acting tenant is known
        limit_route,  # §3.7 post-auth limits
        verify_webhook,  # §10 webhook signatures over the raw body
    )
    assert spec_order == pipeline.PIPELINE


def test_no_costly_stage_runs_before_the_cheap_refusals() -> None:
    """The §3 reasons, as relations: whatever else is inserted later must keep these."""
    order = {stage: index for index, stage in enumerate(pipeline.PIPELINE)}
    assert order[resolve_route] < order[apply_cors] < order[authenticate]
    assert order[check_killswitch] < order[limit_pre_auth] < order[authenticate]
    assert order[authenticate] < order[apply_tenancy] < order[check_tenant_killswitch]
    assert order[check_tenant_killswitch] < order[limit_route]


def test_response_checks_run_in_the_spec_order() -> None:
    # §3.9: the tenant echo first (a leaked answer is withheld), then the login outcome
    spec_order = (check_tenant_echo, check_login_outcome)
    assert spec_order == pipeline.RESPONSE_CHECKS


async def test_the_runner_awaits_a_stage_that_returns_a_coroutine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain stage answers at once; one that has to wait returns a coroutine, awaited for the
    same answer (``None`` goes on, a response ends the run); a later stage never runs."""
    ran: list[str] = []
    answer = web.Response(status=204)

    def plain(ctx: RequestContext) -> None:
        ran.append("plain")

    async def waits(ctx: RequestContext) -> None:
        await asyncio.sleep(0)
        ran.append("waits")

    def slow_path(ctx: RequestContext) -> StageResult:
        async def answers() -> web.StreamResponse:
            await asyncio.sleep(0)
            ran.append("answers")
            return answer

        return answers()

    def never(ctx: RequestContext) -> None:
        ran.append("never")

    monkeypatch.setattr(pipeline, "PIPELINE", (plain, waits, slow_path, never))
    ctx = cast(RequestContext, types.SimpleNamespace(deferred_pre_auth=None))
    assert await pipeline.run_stages(ctx) is answer
    assert ran == ["plain", "waits", "answers"]
    assert await pipeline.run_stage(plain, ctx) is None
    assert await pipeline.run_stage(slow_path, ctx) is answer


async def test_a_stage_returning_another_awaitable_is_an_error_not_an_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bare Future (say, a store reply handed back as it is) is not an answer: the run fails
    rather than skip the check, and no later stage runs."""
    ran: list[str] = []

    def hands_back_a_future(ctx: RequestContext) -> StageResult:
        return cast(StageResult, asyncio.get_running_loop().create_future())

    def never(ctx: RequestContext) -> None:
        ran.append("never")

    monkeypatch.setattr(pipeline, "PIPELINE", (hands_back_a_future, never))
    ctx = cast(RequestContext, types.SimpleNamespace(deferred_pre_auth=None))
    with pytest.raises(TypeError, match="hands_back_a_future"):
        await pipeline.run_stages(ctx)
    assert ran == []
