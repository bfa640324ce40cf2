"""The admin additions of Appendix C for the console, against a real gateway: the dry run counts
real requests and engages nothing, ``/admin/instances``, the engage pickers, ``/admin/traffic``,
and the read-only ``gateway-viewer`` role (reads pass, every change is refused)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.demo.identities import make_user
from gateway.demo.issuer import DemoIssuer
from tests.e2e import killswitch_helpers as helpers
from tests.e2e.killswitch_helpers import admin, killswitch_config, raw_request, status_of
from tests.support.gateway_proc import ADMIN_TOKEN, GatewayProc, insecure_client_context
from tests.support.issuers import mint
from tests.support.upstream import Upstream

issuers, upstream, gw, clean = helpers.issuers, helpers.upstream, helpers.gw, helpers.clean


def operator(issuers: dict[str, DemoIssuer], role: str) -> str:
    return mint(issuers["ops"], "shopino-ops", [role], user_id=f"op-{role}")


async def test_dry_run_counts_this_gateways_requests_and_engages_nothing(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    for _ in range(4):
        assert await status_of(http, clean.url + "/api/finance/invoices/7") == 200
    assert await status_of(http, clean.url + "/api/orders/1", method="POST") == 200
    body = {"scope": "module", "target": "finance", "mode": "block", "reason": "what if"}
    status, data = await admin(http, clean, "POST", "/admin/killswitch?dry_run=true", body)
    assert status == 200, data
    assert data["would_refuse"] >= 4 and data["window_s"] == 300
    status, ro = await admin(
        http,
        clean,
        "POST",
        "/admin/killswitch?dry_run=true",
        {**body, "scope": "global", "target": "*", "mode": "read-only"},
    )
    assert status == 200 and ro["would_refuse"] >= 1 and ro["would_refuse"] < ro["requests"]
    # Nothing was engaged: no switch stored, the finance module still answers.
    status, listing = await admin(http, clean, "GET", "/admin/killswitch")
    assert listing["switches"] == []
    assert await status_of(http, clean.url + "/api/finance/invoices/7") == 200
    # A dry run is validated like an engage: an unknown module is a 400 naming what exists.
    status, bad = await admin(
        http, clean, "POST", "/admin/killswitch?dry_run=true", {**body, "target": "nope"}
    )
    assert status == 400 and "finance" in bad["known"]
    status, _ = await admin(http, clean, "POST", "/admin/killswitch?dry_run=maybe", body)
    assert status == 400


async def test_instances_targets_and_traffic(clean: GatewayProc, http: aiohttp.ClientSession) -> None:
    status, data = await admin(http, clean, "GET", "/admin/instances")
    assert status == 200, data
    [me] = data["instances"]
    assert me["state"] == "enforcing" and me["version"] == data["version"] and me["store"] == "ok"
    assert set(me) == {"instance", "version", "heartbeat_age_s", "store", "state"}
    status, targets = await admin(http, clean, "GET", "/admin/killswitch/targets")
    assert status == 200 and "finance" in targets["module"] and "woo" in targets["integration"]
    assert "finance-api" in targets["route"] and "endpoint" in targets["scopes"]
    await status_of(http, clean.url + "/api/secure/x")  # 401: a refusal
    status, traffic = await admin(http, clean, "GET", "/admin/traffic")
    assert status == 200 and traffic["window_s"] == 900
    assert any("secure" in p["routes"] for p in traffic["points"])
    assert traffic["refusal_status"].get("missing-token") == 401 or traffic["top_refused"]
    assert all(c["client_ip"] == "127.0.0.0" for c in traffic["top_refused"])  # truncated


@pytest.mark.parametrize(
    ("role", "method", "path", "expected"),
    [
        ("gateway-viewer", "GET", "/admin/instances", 200),
        ("gateway-viewer", "GET", "/admin/killswitch", 200),
        ("gateway-viewer", "GET", "/admin/traffic", 200),
        ("gateway-viewer", "GET", "/admin/audit/verify?tenant=_system", 200),
        ("gateway-viewer", "GET", "/admin/lockouts", 200),  # pseudonymised, see below
        ("gateway-viewer", "DELETE", "/admin/lockouts?ip=127.0.0.1", 403),
        ("gateway-viewer", "POST", "/admin/killswitch", 403),
        ("gateway-viewer", "POST", "/admin/killswitch?dry_run=true", 403),
        ("gateway-viewer", "DELETE", "/admin/killswitch/ks_x", 403),
        ("gateway-viewer", "POST", "/admin/keys/rotate", 403),
        ("gateway-viewer", "GET", "/admin/audit?tenant=_system", 403),  # no trail contents
        ("gateway-viewer", "GET", "/admin/config", 403),
        ("incident-responder", "GET", "/admin/instances", 200),
        ("incident-responder", "GET", "/admin/killswitch/targets", 200),
    ],
)
async def test_role_matrix_of_the_console_endpoints(
    clean: GatewayProc, http: aiohttp.ClientSession, issuers, role: str, method: str, path: str, expected: int
) -> None:
    body = {"scope": "module", "target": "finance", "reason": "viewer tries"} if method == "POST" else None
    status, data = await admin(http, clean, method, path, body, token=operator(issuers, role))
    assert status == expected, data
    status, me = await admin(http, clean, "GET", "/admin/whoami", token=operator(issuers, role))
    assert status == 200 and me == {"actor": f"jwt:op-{role}", "roles": [role]}
    status, listing = await admin(http, clean, "GET", "/admin/killswitch")
    assert listing["switches"] == []  # nothing a refused call could have engaged


@pytest.fixture(scope="module")
def login_gw(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, issuers: dict[str, DemoIssuer]
) -> Iterator[GatewayProc]:
    tmp = tmp_path_factory.mktemp("lockouts")
    config = killswitch_config(upstream.url, tmp, issuers)
    config["routes"].append(
        {"name": "login", "prefix": "/login", "upstream": "app", "auth": "none", "login": True,
         "methods": ["POST"], "rate_limit": ["login"]}
    )  # fmt: skip
    config["rate_limits"] = {
        "login": {"window": "5m", "failures_per_username": 2, "failures_per_ip": 3, "base_lockout": "5m"},
        "policies": {"login": [{"key": "ip", "limit": "1000/minute"}]},
    }
    proc = GatewayProc(tmp, config).start()
    yield proc
    proc.stop()


async def test_a_viewer_sees_lockouts_pseudonymised_like_the_traffic_view(
    login_gw: GatewayProc, http: aiohttp.ClientSession, issuers: dict[str, DemoIssuer]
) -> None:
    for username in ("alice.lockout@example.com", "alice.lockout@example.com", "bob"):
        async with http.post(login_gw.url + "/login", json={"username": username, "password": "x"}) as r:
            assert r.status == 401  # the upstream refuses; the third failure locks the IP
    status, full = await admin(
        http, login_gw, "GET", "/admin/lockouts", token=operator(issuers, "incident-responder")
    )
    assert status == 200 and full["pseudonymized"] is False and full["truncated"] is False
    by_kind = {entry["kind"]: entry["subject"] for entry in full["lockouts"]}
    assert by_kind["ip"] == "127.0.0.1" and by_kind["user"]  # the responder clears by these
    status, static = await admin(http, login_gw, "GET", "/admin/lockouts")
    assert status == 200 and static["pseudonymized"] is False  # the static token acts as gateway-admin
    assert {e["subject"] for e in static["lockouts"]} == set(by_kind.values())

    async with http.get(
        login_gw.admin_url + "/admin/lockouts",
        headers={"Authorization": f"Bearer {operator(issuers, 'gateway-viewer')}"},
    ) as response:
        assert response.status == 200
        raw = await response.text()
    # SECURITY: neither the full address nor the store's username hash reaches a viewer.
    assert "127.0.0.1" not in raw and by_kind["user"] not in raw and "alice" not in raw
    viewed = orjson.loads(raw)
    assert viewed["pseudonymized"] is True and viewed["truncated"] is False
    shown = {entry["kind"]: entry for entry in viewed["lockouts"]}
    assert shown["ip"]["subject"] == "127.0.0.0"  # truncated as in /admin/traffic's top_refused
    assert shown["user"]["subject"] and shown["user"]["retry_after"] > 0
    status, again = await admin(
        http, login_gw, "GET", "/admin/lockouts", token=operator(issuers, "gateway-viewer")
    )
    assert {e["subject"] for e in again["lockouts"]} == {e["subject"] for e in viewed["lockouts"]}  # stable


@pytest.mark.parametrize(
    "path", ["/console/", "/console/main.js", "/console/console.css", "/console/nope.js"]
)
async def test_every_console_answer_carries_the_strict_headers(
    gw: GatewayProc, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(gw.admin_url + path) as response:  # no token: the files are public
        body = await response.read()
        csp = response.headers["Content-Security-Policy"]
        assert response.status == (404 if "nope" in path else 200)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "set-cookie" not in response.headers
    if path == "/console/":
        assert b"<script" in body and b'type="module" src="main.js"' in body
        assert b"<script>" not in body and b" on" + b"click=" not in body  # nothing inline


async def test_console_paths_open_nothing_else(gw: GatewayProc, http: aiohttp.ClientSession) -> None:
    # Sent byte for byte: only what the router matched to a console handler skips the token.
    for target in (
        "/console/../admin/config",
        "/console/%2e%2e/admin/config",
        "/console/..%2fadmin/config",
        "/console//../metrics",
        "/console%2f../admin/config",
        "//console/../admin/config",
    ):
        status, body = await raw_request(gw.admin_port, "GET", target)
        assert status == 401 and b"sha256" not in body, target
    for path in ("/console/assets.py", "/console/..%2fassets.py", "/console/__init__.py"):
        status, body = await raw_request(gw.admin_port, "GET", path)
        assert status == 404 and b"import" not in body, path
    async with http.get(gw.admin_url + "/admin/instances") as response:
        assert response.status == 401  # the API itself still needs a token
        assert response.headers["Cache-Control"] == "no-store"


async def test_extend_sets_a_new_expiry_and_is_audited(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    switch = await helpers.engage(
        http, clean, scope="module", target="orders", ttl="1m", incident="INC-EXT-1"
    )
    status, data = await admin(
        http, clean, "PATCH", f"/admin/killswitch/{switch['id']}", {"ttl": "2h", "reason": "needs longer"}
    )
    assert status == 200, data
    assert data["id"] == switch["id"] and data["expires_at"] > switch["expires_at"]
    assert data["version"] > switch["version"] and data["lagging"] == []
    status, listing = await admin(http, clean, "GET", "/admin/killswitch")
    assert [s["expires_at"] for s in listing["switches"]] == [data["expires_at"]]
    status, incident = await admin(http, clean, "GET", "/admin/incidents/INC-EXT-1")
    events = [a["event"] for a in incident["actions"]]
    assert "killswitch.extended" in events
    status, _ = await admin(http, clean, "PATCH", f"/admin/killswitch/{switch['id']}", {"ttl": "0s"})
    assert status == 400
    status, _ = await admin(http, clean, "PATCH", "/admin/killswitch/ks_unknown", {"ttl": "1h"})
    assert status == 404


async def test_admin_jwt_changes_need_a_recent_mfa(
    clean: GatewayProc, http: aiohttp.ClientSession, issuers
) -> None:
    """admin.mfa_max_age (15m default): an hour-old MFA may still read, but not change."""
    user = make_user("op-stale", "shopino-ops", ["incident-responder"], "irrelevant-pw")
    stale = issuers["ops"].mint(user, amr=("pwd", "otp"), ttl=600, auth_time=int(time.time()) - 3600)
    status, _ = await admin(http, clean, "GET", "/admin/instances", token=stale)
    assert status == 200
    body = {"scope": "module", "target": "finance", "reason": "stale session"}
    async with http.post(
        clean.admin_url + "/admin/killswitch", json=body, headers={"Authorization": f"Bearer {stale}"}
    ) as response:
        assert response.status == 401
        challenge = response.headers["WWW-Authenticate"]
        assert 'error="insufficient_user_authentication"' in challenge and "max_age=900" in challenge
    status, listing = await admin(http, clean, "GET", "/admin/killswitch")
    assert listing["switches"] == []
    fresh = operator(issuers, "incident-responder")
    status, data = await admin(http, clean, "POST", "/admin/killswitch?dry_run=true", body, token=fresh)
    assert status == 200, data


async def test_containment_calls_file_the_reason_they_were_given(
    clean: GatewayProc, http: aiohttp.ClientSession
) -> None:
    body = {"revoke_old": False, "incident": "INC-REASON-1", "reason": "laptop stolen"}
    status, data = await admin(http, clean, "POST", "/admin/keys/rotate", body)
    assert status == 200, data
    status, data = await admin(
        http,
        clean,
        "POST",
        "/admin/sessions/revoke",
        {"tenant": "acme", "incident": "INC-REASON-1", "reason": "laptop stolen"},
    )
    assert status == 200, data
    status, incident = await admin(http, clean, "GET", "/admin/incidents/INC-REASON-1")
    reasons = {a["event"]: a["details"].get("reason") for a in incident["actions"]}
    assert reasons == {"keys.rotated": "laptop stolen", "sessions.revoked": "laptop stolen"}
    status, bad = await admin(http, clean, "POST", "/admin/keys/rotate", {"reason": ["x"]})
    assert status == 400 and "reason" in bad["detail"]


async def test_the_cli_makes_the_same_calls(clean: GatewayProc, http: aiohttp.ClientSession) -> None:
    """The console's additions have CLI verbs too: dry run, extend, instances."""
    assert await status_of(http, clean.url + "/api/orders/9") == 200
    dry = clean.cli(
        "killswitch",
        "engage",
        "--scope",
        "module",
        "--target",
        "orders",
        "--mode",
        "block",
        "--reason",
        "what if",
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("dry run: would have refused ") and "nothing engaged" in dry.stdout
    _, listing = await admin(http, clean, "GET", "/admin/killswitch")
    assert listing["switches"] == []
    switch = await helpers.engage(http, clean, scope="module", target="orders", ttl="5m")
    extended = clean.cli("killswitch", "extend", switch["id"], "--ttl", "3h", "--reason", "longer")
    assert extended.returncode == 0, extended.stderr
    assert extended.stdout.startswith(f"extended {switch['id']}: module orders until ")
    instances = clean.cli("killswitch", "instances")
    assert instances.returncode == 0 and "ENFORCING" in instances.stdout
    missing = clean.cli("killswitch", "extend", "ks_nope", "--ttl", "1h")
    assert missing.returncode == 2


async def test_console_behind_an_admin_tls_listener(
    gateway_factory, upstream: Upstream, issuers, tmp_path: Path
) -> None:
    config = helpers.killswitch_config(upstream.url, tmp_path, issuers)
    config["admin"]["tls"] = "self-signed"
    gw = gateway_factory(config)
    base = f"https://127.0.0.1:{gw.admin_port}"
    connector = aiohttp.TCPConnector(ssl=insecure_client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(base + "/console/") as response:
            assert response.status == 200
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with session.get(base + "/admin/instances", headers=headers) as response:
            assert response.status == 200 and "Strict-Transport-Security" in response.headers
