"""The demo ERP the gateway fronts: login, five tenant-aware modules, and debug endpoints.

Tenant isolation here is deliberately naive — the backend believes whatever tenant the gateway
asserts (see :func:`request_tenant`) — because the gateway is what is under test. With
``context_keys`` (what ``shopino-gateway demo`` passes) it believes only a request whose signed
``X-Gateway-Context`` verifies: unsigned requests get 401, forged, stale or replayed ones 403.
Without keys (unit tests of the backend alone) it takes ``X-Tenant-ID`` as it comes.
The ``/debug/*`` endpoints exist for end-to-end proxy tests (echo, streaming, slow, WebSocket).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import secrets
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.demo.identities import ACME, GLOBEX, DemoUser, PasswordHash, UserDirectory
from gateway.demo.issuer import DemoIssuer
from gateway.tenancy import ContextInvalid, ReplayCache, VerifiedContext, verify_context

TENANT_HEADER = "X-Tenant-ID"
LOGIN_TTL = 900
MAX_RECORDS = 100_000  # per tenant and module: bounds memory when benchmarks POST in a loop
MAX_STREAM_BYTES = 64 * 2**30
MAX_CHUNK = 2**20
MAX_SLOW_SECONDS = 300.0
_MAX_CREDENTIAL_LEN = 1024  # scrypt's cost grows with input length; no real password is longer
# URL segment under /api/ -> id prefix
MODULES: Mapping[str, str] = {
    "inventory/items": "itm",
    "finance/invoices": "inv",
    "customers": "cus",
    "manufacturing/boms": "bom",
    "logistics/routes": "rte",
}
_PATTERN = bytes(range(256))
_SERVER_KEYS = frozenset({"id", "tenant", "created_by"})


_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
CONTEXT_KEYS = web.AppKey("context_keys", tuple)
REPLAYS = web.AppKey("replays", ReplayCache)
VERIFIED = web.RequestKey("verified_context", object)  # VerifiedContext, or the ContextInvalid


def verified_context(request: web.BaseRequest) -> VerifiedContext | None:
    """The gateway's signed assertion, verified once per request (None without keys).

    The ONE place the backend trusts the gateway. Raises ``ContextInvalid``."""
    if not isinstance(request, web.Request):
        return None  # no application, so no context keys
    keys = request.app[CONTEXT_KEYS]
    if not keys:
        return None
    cached = request.get(VERIFIED)
    if cached is None:
        try:
            # Unsafe methods are never legitimately repeated byte for byte: refuse replays.
            replays = None if request.method in _SAFE_METHODS else request.app[REPLAYS]
            cached = verify_context(
                request.headers, request.method, request.raw_path, keys, replay_cache=replays
            )
        except ContextInvalid as exc:
            cached = exc
        request[VERIFIED] = cached
    if isinstance(cached, ContextInvalid):
        raise cached
    assert isinstance(cached, VerifiedContext)
    return cached


def request_tenant(request: web.BaseRequest) -> str | None:
    """The acting tenant as the gateway asserted it, or None (also when it does not verify)."""
    try:
        context = verified_context(request)
    except ContextInvalid:
        return None
    if context is not None:
        return context.tenant
    return request.headers.get(TENANT_HEADER) or None


def request_user(request: web.BaseRequest) -> str | None:
    context = verified_context(request)
    return context.user if context is not None else request.headers.get("X-User-ID")


def pattern_bytes(offset: int, length: int) -> bytes:
    """What ``/debug/stream`` sends at ``offset``: byte i of the stream is ``i % 256``, so a
    client can check content (and ordering) without the server holding the whole body."""
    return bytes((offset + i) % 256 for i in range(length))


class TenantStore:
    """In-memory records per tenant and module. Ids come from one counter per module shared by
    all tenants, so an id from one tenant looked up in another is a clean 404, not a collision."""

    def __init__(self, seed: Mapping[str, Mapping[str, Iterable[Mapping[str, Any]]]]) -> None:
        self._data: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
            tenant: {module: {} for module in MODULES} for tenant in seed
        }
        self._ids = {module: itertools.count(1001) for module in MODULES}
        for tenant, modules in seed.items():
            for module, records in modules.items():
                for record in records:
                    self.create(tenant, module, record)

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self._data)

    def list(self, tenant: str, module: str) -> list[dict[str, Any]]:
        return list(self._data[tenant][module].values())

    def get(self, tenant: str, module: str, record_id: str) -> dict[str, Any] | None:
        return self._data[tenant][module].get(record_id)

    def create(
        self, tenant: str, module: str, fields: Mapping[str, Any], created_by: str | None = None
    ) -> dict[str, Any] | None:
        """Store a record; None when the tenant's module is full."""
        records = self._data[tenant][module]
        if len(records) >= MAX_RECORDS:
            return None
        record_id = f"{MODULES[module]}-{next(self._ids[module])}"
        # Server-owned keys come only from here: a client cannot choose its id or tenant.
        record = {
            "id": record_id,
            "tenant": tenant,
            **{key: value for key, value in fields.items() if key not in _SERVER_KEYS},
        }
        if created_by:
            record["created_by"] = created_by
        records[record_id] = record
        return record


STORE = web.AppKey("store", TenantStore)
ISSUER = web.AppKey("issuer", DemoIssuer)
USERS = web.AppKey("users", UserDirectory)
DUMMY_HASH = web.AppKey("dummy_hash", PasswordHash)
WEBSOCKETS = web.AppKey("websockets", weakref.WeakSet[web.WebSocketResponse])


def _json_error(exc: type[web.HTTPException], error: str, message: str) -> web.HTTPException:
    return exc(text=json.dumps({"error": error, "message": message}), content_type="application/json")


def _tenant_of(request: web.Request) -> str:
    try:
        context = verified_context(request)
    except ContextInvalid as exc:
        if exc.reason == "missing":
            raise _json_error(
                web.HTTPUnauthorized, "missing_context", "a signed gateway context is required"
            ) from None
        raise _json_error(
            web.HTTPForbidden, "invalid_context", "the gateway context does not verify"
        ) from None
    tenant = context.tenant if context is not None else request_tenant(request)
    named = request.match_info.get("tenant")
    if named is not None and named != tenant:
        # Defence in depth: the gateway already refuses this (403 tenant-mismatch).
        raise _json_error(web.HTTPForbidden, "tenant_mismatch", "the path names another tenant")
    if tenant is None:
        raise _json_error(web.HTTPUnauthorized, "missing_tenant", f"{TENANT_HEADER} is required")
    if tenant not in request.app[STORE].tenants:
        raise _json_error(web.HTTPNotFound, "unknown_tenant", "no such tenant")
    return tenant


async def _echo_tenant(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Every tenant request's response names its tenant (the gateway's leak check compares it).
    A signal rather than a middleware so streamed and WebSocket responses get it too — their
    headers are sent before the handler returns."""
    tenant = request_tenant(request)
    if tenant is not None and TENANT_HEADER not in response.headers:
        response.headers[TENANT_HEADER] = tenant


# --- auth -------------------------------------------------------------------------------------

_INVALID_LOGIN = {"error": "invalid_credentials", "message": "invalid username or password"}


async def _read_credentials(request: web.Request) -> tuple[str, str]:
    try:
        if request.content_type == "application/json":
            body: Any = await request.json()
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            body = dict(await request.post())
        else:
            raise ValueError("unsupported content type")
    except ValueError:
        raise _json_error(
            web.HTTPBadRequest, "bad_request", "send JSON or form data with username and password"
        ) from None
    username = body.get("username") if isinstance(body, dict) else None
    password = body.get("password") if isinstance(body, dict) else None
    if (
        not (isinstance(username, str) and isinstance(password, str))
        or max(len(username), len(password)) > _MAX_CREDENTIAL_LEN
    ):
        raise _json_error(web.HTTPBadRequest, "bad_request", "username and password are required")
    return username, password


async def login(request: web.Request) -> web.Response:
    username, password = await _read_credentials(request)
    user: DemoUser | None = request.app[USERS].get(username)
    # Unknown users are checked against a dummy hash: same scrypt cost, same answer, so neither
    # the body nor the timing tells an attacker which usernames exist. In a thread, because
    # scrypt is tens of ms of CPU and would otherwise stall every other request.
    hashed = user.password_hash if user is not None else request.app[DUMMY_HASH]
    valid = await asyncio.to_thread(hashed.verify, password)
    if user is None or not valid:
        return web.json_response(_INVALID_LOGIN, status=401)
    token = request.app[ISSUER].mint(user, amr=("pwd",), ttl=LOGIN_TTL)
    return web.json_response(
        {"access_token": token, "token_type": "Bearer", "expires_in": LOGIN_TTL},
        headers={"Cache-Control": "no-store"},  # RFC 6749 §5.1: token responses are not cached
    )


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.app[ISSUER].jwks())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


# --- ERP modules ------------------------------------------------------------------------------


def _module_routes(module: str, base: str | None = None) -> list[web.RouteDef]:
    async def list_records(request: web.Request) -> web.Response:
        tenant = _tenant_of(request)
        records = request.app[STORE].list(tenant, module)
        return web.json_response({"tenant": tenant, "count": len(records), "items": records})

    async def get_record(request: web.Request) -> web.Response:
        tenant = _tenant_of(request)
        record = request.app[STORE].get(tenant, module, request.match_info["record_id"])
        if record is None:
            raise _json_error(web.HTTPNotFound, "not_found", "no such record")
        return web.json_response(record)

    async def create_record(request: web.Request) -> web.Response:
        tenant = _tenant_of(request)
        try:
            fields = await request.json()
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            raise _json_error(web.HTTPBadRequest, "bad_request", "expected a JSON object")
        record = request.app[STORE].create(tenant, module, fields, created_by=request_user(request))
        if record is None:
            raise _json_error(web.HTTPInsufficientStorage, "full", "demo record limit reached")
        location = f"/api/{module}/{record['id']}"
        return web.json_response(record, status=201, headers={"Location": location})

    base = base or f"/api/{module}"
    return [
        web.get(base, list_records),
        web.post(base, create_record),
        web.get(base + "/{record_id}", get_record),
    ]


# --- debug endpoints for proxy tests ----------------------------------------------------------


def _number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    try:
        value = default if raw is None else float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also rejects NaN
        raise _json_error(web.HTTPBadRequest, "bad_request", f"{name} must be in [{low}, {high}]")
    return value


async def echo(request: web.Request) -> web.Response:
    """What the upstream actually received: raw target, every header in order (duplicates
    kept), body size — the ground truth for header stripping and path normalisation tests."""
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
    return web.json_response(
        {"method": request.method, "path_qs": request.raw_path, "headers": headers, "body_length": size}
    )


async def stream(request: web.Request) -> web.StreamResponse:
    total = int(_number(request, "bytes", 2**20, 0, MAX_STREAM_BYTES))
    chunk = int(_number(request, "chunk", 65536, 1, MAX_CHUNK))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = total
    await response.prepare(request)
    # One buffer of chunk+256 bytes serves every write (sliced at offset % 256): constant
    # memory however large ``bytes`` is.
    window = memoryview(_PATTERN * (chunk // 256 + 2))
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        await response.write(window[sent % 256 : sent % 256 + size])
        sent += size
    await response.write_eof()
    return response


async def sink(request: web.Request) -> web.Response:
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_any():  # streamed: never the whole body in memory
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"bytes": size, "sha256": digest.hexdigest()})


async def slow(request: web.Request) -> web.Response:
    seconds = _number(request, "seconds", 1.0, 0.0, MAX_SLOW_SECONDS)
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})


async def websocket_echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    if not ws.can_prepare(request).ok:
        raise _json_error(web.HTTPBadRequest, "bad_request", "expected a WebSocket upgrade")
    await ws.prepare(request)
    request.app[WEBSOCKETS].add(ws)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def leak(request: web.Request) -> web.Response:
    """A deliberately buggy endpoint: answers with another tenant's customers (and that tenant
    in ``X-Tenant-ID``), so the gateway's leak blocker can be demonstrated and tested."""
    other = request.query.get("as", "")
    if other not in request.app[STORE].tenants:
        raise _json_error(web.HTTPNotFound, "unknown_tenant", "no such tenant")
    records = request.app[STORE].list(other, "customers")
    return web.json_response({"tenant": other, "items": records}, headers={TENANT_HEADER: other})


async def _close_websockets(app: web.Application) -> None:
    # Open WebSockets would otherwise hold shutdown until the runner's timeout.
    sockets: weakref.WeakSet[web.WebSocketResponse] = app[WEBSOCKETS]
    for ws in tuple(sockets):  # a snapshot: closing one mutates the WeakSet
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


def make_backend_app(
    issuer: DemoIssuer,
    users: Iterable[DemoUser],
    *,
    seed: Mapping[str, Mapping[str, Iterable[Mapping[str, Any]]]] | None = None,
    context_keys: Sequence[str | bytes] = (),
) -> web.Application:
    """The demo ERP as an aiohttp app; ``seed`` (tenant -> module -> records) defaults to two
    tenants, ``acme`` and ``globex``, with a few records per module. ``context_keys``: the
    gateway's context MAC keys (current first); empty trusts ``X-Tenant-ID`` unverified."""
    app = web.Application()
    app[CONTEXT_KEYS] = tuple(context_keys)
    app[REPLAYS] = ReplayCache()
    app[STORE] = TenantStore(SEED if seed is None else seed)
    app[ISSUER] = issuer
    app[USERS] = users if isinstance(users, UserDirectory) else UserDirectory(users)
    app[DUMMY_HASH] = PasswordHash.create(secrets.token_urlsafe(16))
    app[WEBSOCKETS] = weakref.WeakSet()
    app.on_response_prepare.append(_echo_tenant)
    app.on_shutdown.append(_close_websockets)
    app.add_routes(
        [
            web.post("/auth/login", login),
            web.get("/.well-known/jwks.json", jwks),
            web.get("/healthz", healthz),
            web.route("*", "/debug/echo", echo),
            web.route("*", "/debug/echo/{tail:.*}", echo),
            web.get("/debug/stream", stream),
            web.post("/debug/sink", sink),
            web.get("/debug/slow", slow),
            web.get("/debug/ws", websocket_echo),
            web.get("/debug/leak", leak),
        ]
    )
    for module in MODULES:
        app.add_routes(_module_routes(module))
    # The tenant-in-the-path API (the gateway's tenant_from demo): inventory only, so a support
    # grant for "inventory" (or "*") opens exactly this and nothing of finance or customers.
    app.add_routes(_module_routes("inventory/items", "/t/{tenant}/api/inventory/items"))
    return app


@dataclass
class BackendServer:
    """A running backend: ``url`` to point an upstream at, ``close()`` to stop it."""

    app: web.Application
    runner: web.AppRunner
    host: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()

    async def __aenter__(self) -> BackendServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_backend(
    issuer: DemoIssuer,
    users: Iterable[DemoUser],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: Any = None,
    context_keys: Sequence[str | bytes] = (),
) -> BackendServer:
    """Serve the demo ERP in this event loop; ``port=0`` picks a free port (see ``.url``)."""
    app = make_backend_app(issuer, users, context_keys=context_keys)
    # access_log=None: the demo's console is for the gateway's logs; shutdown_timeout keeps
    # Ctrl-C and test teardown quick.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        await site.start()
        bound_port = int(runner.addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    return BackendServer(app, runner, host, bound_port, "https" if ssl_context is not None else "http")


# --- seed data: fake but realistic records (Karachi/Lahore distributor, Dhaka garment maker) ---


def _rows(fields: str, *rows: tuple[Any, ...]) -> list[dict[str, Any]]:
    names = fields.split()
    return [dict(zip(names, row, strict=True)) for row in rows]


_ITEM = "sku name quantity unit_price currency warehouse"
_INVOICE = "number customer amount currency status due_date"
_CUSTOMER = "name phone email city national_id"
_BOM = "sku product components labour_minutes"
_ROUTE = "code origin destination stops vehicle distance_km"
SEED: Mapping[str, Mapping[str, list[dict[str, Any]]]] = {
    ACME: {
        "inventory/items": _rows(
            _ITEM,
            ("ACM-RICE-5KG", "Basmati rice, 5 kg bag", 420, 2350, "PKR", "Karachi SITE"),
            ("ACM-OIL-3L", "Cooking oil, 3 L tin", 185, 1690, "PKR", "Lahore Sundar"),
            ("ACM-TEA-950", "Black tea, 950 g pack", 610, 1480, "PKR", "Karachi SITE"),
        ),
        "finance/invoices": _rows(
            _INVOICE,
            ("ACM-INV-0117", "Ayesha Siddiqui", 184500, "PKR", "paid", "2026-11-30"),
            ("ACM-INV-0118", "Bilal Ahmed Khan", 67250, "PKR", "open", "2026-12-15"),
        ),
        "customers": _rows(
            _CUSTOMER,
            ("Ayesha Siddiqui", "+92 300 2145567", "ayesha.siddiqui@example.pk", "Lahore", "35202-4518763-2"),
            ("Bilal Ahmed Khan", "0321-8765432", "bilal.khan@example.pk", "Karachi", "42101-7654321-5"),
            ("Mehwish Javed", "+92 333 5012398", "mehwish.j@example.pk", "Rawalpindi", "37405-2298145-6"),
        ),
        "manufacturing/boms": _rows(
            _BOM,
            (
                "ACM-KIT-RAM",
                "Ramadan ration pack",
                [
                    {"sku": "ACM-RICE-5KG", "qty": 1},
                    {"sku": "ACM-OIL-3L", "qty": 1},
                    {"sku": "ACM-TEA-950", "qty": 1},
                ],
                6,
            ),
        ),
        "logistics/routes": _rows(
            _ROUTE,
            ("KHI-HYD-01", "Karachi SITE", "Hyderabad", ["Jamshoro"], "Hino 500", 165),
            ("LHE-ISB-02", "Lahore Sundar", "Islamabad", ["Gujranwala", "Jhelum"], "Isuzu NPR", 380),
        ),
    },
    GLOBEX: {
        "inventory/items": _rows(
            _ITEM,
            ("GLX-FAB-TWILL", "Cotton twill 58 in, per yard", 12000, 310, "BDT", "Gazipur"),
            ("GLX-BTN-18L", "Polyester buttons 18L, per gross", 950, 145, "BDT", "Narayanganj"),
            ("GLX-THR-40S", "Sewing thread 40/2, 5000 m cone", 2400, 220, "BDT", "Gazipur"),
        ),
        "finance/invoices": _rows(
            _INVOICE,
            ("GLX-INV-0931", "Tahmina Akter", 1250000, "BDT", "open", "2026-12-20"),
            ("GLX-INV-0932", "Rafiqul Islam", 318400, "BDT", "paid", "2026-11-25"),
        ),
        "customers": _rows(
            _CUSTOMER,
            ("Tahmina Akter", "+880 1712-345678", "tahmina.akter@example.com.bd", "Dhaka", "2690412358"),
            ("Rafiqul Islam", "01819-112233", "rafiq.islam@example.com.bd", "Chattogram", "5512093847"),
            ("Nusrat Jahan", "+880 1911-204060", "nusrat.jahan@example.com.bd", "Sylhet", "8823610495"),
        ),
        "manufacturing/boms": _rows(
            _BOM,
            (
                "GLX-CHINO-32",
                "Men's chino trousers, W32",
                [
                    {"sku": "GLX-FAB-TWILL", "qty": 1.6},
                    {"sku": "GLX-BTN-18L", "qty": 0.02},
                    {"sku": "GLX-THR-40S", "qty": 0.05},
                ],
                38,
            ),
        ),
        "logistics/routes": _rows(
            _ROUTE, ("GZP-CGP-01", "Gazipur factory", "Chattogram port", ["Cumilla"], "Tata LPT 1613", 265)
        ),
    },
}
