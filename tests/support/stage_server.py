"""Pipeline stages on a real in-process server on loopback, one stage (or a short run of them)
at a time: the unit tests of ``gateway/middleware/`` send real HTTP requests through aiohttp's
low-level server, as the public listener does, without the rest of the gateway.

The handler builds the request's context with ``gateway.app.begin_request``, runs the given
stages in order as ``gateway.pipeline.run_stages`` does (each by ``gateway.pipeline.run_stage``:
a plain stage's answer as is, a coroutine it returns awaited; an early answer ends the run), and
renders a refusal with ``gateway.app.render_problem``, the one problem+json renderer. A request
that every stage lets through gets 200 and a JSON summary of what the stages set on its context
(``stage_client``), or whatever the caller's ``answer`` gives (``runtime_client``: e.g. the
real proxy with ``gateway.pipeline``'s header hooks and response checks).

The request-shape stages run on ``stage_runtime``, a stand-in built from a real config; the
stages that need identity, the store or the switch set run on ``gateway_runtime``: the
runtime a real ``GatewayProcess`` builds, its services started on a real store, no listener.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import orjson
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient

from gateway.app import begin_request
from gateway.config_model import GatewayConfig
from gateway.config_schema import parse_config
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.http.problem import render_problem
from gateway.pipeline import Stage, run_stage
from gateway.routing import RouteTable
from gateway.runtime import Runtime
from gateway.server.process import GatewayProcess
from gateway.upstream.forwarding import TrustedProxies

Answer = Callable[[RequestContext], Awaitable[web.StreamResponse]]
AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]

UPSTREAMS = "upstreams:\n  erp:\n    urls: ['http://127.0.0.1:9']\n"


@dataclass(frozen=True)
class StageRuntime:
    """The part of ``gateway.runtime.Runtime`` that the request-shape stages (header limits,
    hygiene, route, CORS, body limit) and the problem renderer read, built from a real config.
    A stage that starts reading more fails here loudly (500), not silently."""

    config: GatewayConfig
    routes: RouteTable[Any]
    trusted_proxies: TrustedProxies
    tls: bool = False
    spans: None = None


def stage_runtime(config_text: str) -> Runtime:
    config = parse_config(UPSTREAMS + config_text)
    runtime = StageRuntime(
        config=config,
        routes=RouteTable(config.routes, case_insensitive=config.routes_case_insensitive),
        trusted_proxies=TrustedProxies(config.trusted_proxies),
    )
    return cast(Runtime, runtime)


def passed(ctx: RequestContext) -> web.Response:
    """What a request that passed every stage is answered: what they recorded on its context,
    and the headers they meant for the client (as the proxy adds them to the upstream's answer)."""
    summary = {
        "route": ctx.route.name if ctx.route is not None else None,
        "path": ctx.target.path if ctx.target is not None else None,
    }
    return web.Response(
        body=orjson.dumps(summary), content_type="application/json", headers=ctx.response_headers
    )


async def stage_client(
    aiohttp_client: AiohttpClient, config_text: str, *stages: Stage
) -> TestClient[Any, Any]:
    """A client of a loopback server whose every request runs ``stages`` with ``config_text``
    (routes, cors, listen, auth ...; an upstream ``erp`` is always defined)."""
    return await runtime_client(aiohttp_client, stage_runtime(config_text), *stages)


async def _passed(ctx: RequestContext) -> web.StreamResponse:
    return passed(ctx)


async def runtime_client(
    aiohttp_client: AiohttpClient, runtime: Runtime, *stages: Stage, answer: Answer = _passed
) -> TestClient[Any, Any]:
    """A client of a loopback server whose every request runs ``stages`` on ``runtime``; a
    request they all let through is answered by ``answer`` (its refusals rendered alike)."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        ctx = begin_request(request, runtime, None)
        try:
            for stage in stages:
                early = await run_stage(stage, ctx)
                if early is not None:
                    return early
            return await answer(ctx)
        except GatewayError as error:
            return render_problem(error, ctx, ctx.request_id)

    limits = runtime.config.listen.limits
    # The public listener's parser limits (gateway.server.process): above the gateway's own, so
    # the stage sees what the gateway would see.
    server = RawTestServer(
        handle,
        max_headers=limits.max_headers + 16,
        max_field_size=max(limits.max_header_bytes, limits.max_header_line) + 1024,
        max_line_size=max(16384, limits.max_header_bytes + 1024),
    )
    return await aiohttp_client(server)


class _Snapshot(Protocol):
    """A process service holding state read from the store (revocations, switches ...)."""

    async def start(self) -> None: ...

    async def wait_loaded(self, timeout: float | None = None) -> None: ...


@asynccontextmanager
async def gateway_runtime(
    config_text: str, *, state_url: str, workdir: Path, unloaded: tuple[str, ...] = ()
) -> AsyncIterator[GatewayProcess]:
    """A real ``GatewayProcess`` for ``config_text`` (plus ``state.url`` and an audit spool in
    ``workdir``; demo keys: an ephemeral master and context key), with every service a request
    reads started and loaded, and no listener; stopped on exit. ``process.runtime()`` is the
    runtime the stages read; its services engage switches, revoke, rotate as operators do.
    ``unloaded`` names process services (e.g. ``"killswitches"``) left not started: never loaded."""
    config = parse_config(
        f"state: {{url: '{state_url}'}}\naudit: {{spool_dir: '{workdir / 'spool'}'}}\n" + config_text
    )
    process = GatewayProcess(config, None, workdir=workdir, demo=True)
    services = process.services
    snapshots: dict[str, _Snapshot] = {
        "signing": services.signing,
        "revocations": services.revocations,
        "integrations": services.integrations,
        "killswitches": services.killswitches,
        "grants": services.grants,
    }
    started = [snapshot for name, snapshot in snapshots.items() if name not in unloaded]
    try:
        await process.store.open()
        for snapshot in started:
            await snapshot.start()
        if services.lockout_memory is not None and "lockout_memory" not in unloaded:
            await services.lockout_memory.start()
        for snapshot in started:
            await snapshot.wait_loaded(5.0)
        await process.runtime().verifier.start()
        yield process
    finally:
        await process.stop()


@dataclass(frozen=True)
class RawAnswer:
    status: int
    head: str
    body: bytes

    def json(self) -> dict[str, Any]:
        return cast(dict[str, Any], orjson.loads(self.body))


async def send_raw(client: TestClient[Any, Any], head: str, body: bytes = b"") -> RawAnswer:
    """Sends ``head`` (request line and fields, without the blank line) exactly as written, for
    what an HTTP client would normalise or refuse to send; reads one answer (framed by its
    Content-Length, else until the server closes: aiohttp's own plain-text refusals)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head.encode("latin-1") + b"\r\n\r\n" + body)
        await writer.drain()
        raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        text = raw_head.decode("latin-1")
        fields = dict(line.lower().split(": ", 1) for line in text.split("\r\n")[1:] if ": " in line)
        length = fields.get("content-length")
        read = reader.readexactly(int(length)) if length is not None else reader.read()
        answer = await asyncio.wait_for(read, timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    return RawAnswer(int(text.split(" ", 2)[1]), text, answer)


def problem_type(slug: str) -> str:
    return "urn:shopino-gateway:" + slug
