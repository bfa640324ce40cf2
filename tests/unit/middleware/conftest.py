"""The stages that need identity, the store or the switch set run here the way the public
listener runs them: ``gateway.pipeline.run_stages`` (the ``PIPELINE`` in order, a deferred
pre_auth hit settled before any refusal) on a real runtime (a
``GatewayProcess`` without listeners, ``tests.support.stage_server.gateway_runtime``), and a
request every stage lets through goes to a real loopback upstream through the real proxy with
``UPSTREAM_HEADER_HOOKS`` and ``RESPONSE_CHECKS``. Tokens are ES256, signed by a real key."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.context import RequestContext
from gateway.demo.identities import DemoUser, make_user
from gateway.demo.issuer import DemoIssuer
from gateway.pipeline import RESPONSE_CHECKS, UPSTREAM_HEADER_HOOKS, run_stages
from gateway.proxy import proxy_request
from gateway.runtime import Runtime
from gateway.server.process import GatewayProcess
from tests.support.issuers import AUD, TENANT_IDP
from tests.support.stage_server import AiohttpClient, gateway_runtime, runtime_client


@dataclass
class EchoUpstream:
    """A loopback upstream that records what reached it and answers ``status`` with
    ``answer_headers`` (e.g. an ``X-Tenant-ID`` echo) and the JSON ``{"ok": true}``."""

    url: str = ""
    seen: list[tuple[str, str, list[tuple[str, str]], bytes]] = field(default_factory=list)
    status: int = 200
    answer_headers: dict[str, str] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((request.method, request.raw_path, list(request.headers.items()), body))
        return web.json_response({"ok": True}, status=self.status, headers=self.answer_headers)

    def headers(self, index: int = -1) -> list[tuple[str, str]]:
        return self.seen[index][2]


@pytest.fixture
async def echo_upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> EchoUpstream:
    upstream = EchoUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    server = await aiohttp_server(app)
    upstream.url = f"http://127.0.0.1:{server.port}"
    return upstream


@pytest.fixture
def issuer() -> DemoIssuer:
    """The tenant IdP ``auth.issuers`` trusts."""
    return DemoIssuer(issuer=TENANT_IDP, audience=AUD)


@dataclass
class Gateway:
    process: GatewayProcess
    client: TestClient[Any, Any]

    @property
    def runtime(self) -> Runtime:
        return self.process.runtime()


GatewayFactory = Callable[..., Awaitable[Gateway]]


async def proxied(ctx: RequestContext) -> web.StreamResponse:
    """What the public listener does with a request the pipeline let through."""
    return cast(web.StreamResponse, await proxy_request(ctx, RESPONSE_CHECKS, UPSTREAM_HEADER_HOOKS))


@pytest.fixture
async def gateway(
    aiohttp_client: AiohttpClient, tmp_path: Path, echo_upstream: EchoUpstream, issuer: DemoIssuer
) -> AsyncIterator[GatewayFactory]:
    """Start a gateway runtime for a config (routes, tenancy, rate_limits ...; ``upstreams.erp``
    is the echo upstream and ``auth.issuers`` the ``issuer`` fixture), on ``state_url``
    (default: a local store in ``tmp_path``), and a client whose requests run the whole
    pipeline on it (``run_stages``), then the proxy."""
    jwks = issuer.write_jwks(tmp_path / "idp.json")
    started = itertools.count()
    async with AsyncExitStack() as stack:

        async def start(
            config_text: str, *, state_url: str | None = None, unloaded: tuple[str, ...] = ()
        ) -> Gateway:
            text = (
                f"upstreams:\n  erp:\n    urls: ['{echo_upstream.url}']\n"
                f"auth:\n  issuers:\n    - {{issuer: '{TENANT_IDP}', audience: {AUD}, jwks_file: '{jwks}'}}\n"
                + config_text
            )
            workdir = tmp_path / f"gw{next(started)}"
            workdir.mkdir()
            process = await stack.enter_async_context(
                gateway_runtime(
                    text,
                    state_url=state_url or f"local:{workdir / 'state'}",
                    workdir=workdir,
                    unloaded=unloaded,
                )
            )
            client = await runtime_client(aiohttp_client, process.runtime(), run_stages, answer=proxied)
            return Gateway(process, client)

        yield start


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def mint(
    issuer: DemoIssuer,
    tenant: str,
    roles: list[str],
    amr: tuple[str, ...] = ("pwd", "otp"),
    *,
    user_id: str | None = None,
) -> str:
    """``tests.support.issuers.mint``'s token (10 minutes, MFA-backed by default), each user
    built once: building one hashes its password (scrypt, ~0.1 s), which no stage reads."""
    user = _user(user_id or f"user-{tenant}", tenant, tuple(roles))
    return issuer.mint(user, amr=amr, ttl=600, auth_time=int(time.time()))


@functools.lru_cache(maxsize=64)
def _user(user_id: str, tenant: str, roles: tuple[str, ...]) -> DemoUser:
    return make_user(user_id, tenant, roles, "irrelevant-pw")
